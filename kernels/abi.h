// Kernel parameter structs: the single source of truth for the layout both
// sides use. Rust gets them through bindgen (src/abi.rs, regenerated and
// compared by tests/abi_bindgen.rs). Device addresses are uint64_t so the
// structs are plain data on both sides; fields are ordered to avoid padding.
#pragma once
#include <stdint.h>

// One separable bicubic pass along one axis (Pillow's ResampleHorizontal /
// ResampleVertical, 8 bits per channel), reading `channels` of the first
// bytes of each `src_bpp`-byte pixel.
typedef struct NvlmResamplePass {
    uint64_t src;          // device address of row 0 of the source
    uint64_t src_stride;   // bytes between source rows
    uint64_t first;        // uint32_t[dst size along axis]: first input index per output
    uint64_t count;        // uint32_t[...]: taps used per output
    uint64_t coeffs;       // int32_t[... * taps]: 22-bit fixed-point weights
    uint32_t src_width;
    uint32_t src_height;
    uint32_t src_bpp;      // bytes per source pixel: 1..4
    uint32_t channels;     // channels resampled and written: 1 or 3
    uint32_t dst_width;
    uint32_t dst_height;
    uint32_t taps;         // row length of coeffs
    uint32_t vertical;     // 0: resample along x, 1: along y
} NvlmResamplePass;

// The intermediate of a two-pass resize: packed `channels`-byte pixels.
typedef struct NvlmIntermediate {
    NvlmResamplePass pass;
    uint64_t dst;          // device address, dst_width * channels bytes per row
} NvlmIntermediate;

// The last pass of a resize, fused with the crop into tiles and the
// normalisation: output pixel (x, y) of the resized image goes to tile
// `first_output + (y / tile_size) * tiles_across + x / tile_size` of the
// [T, 3, tile_size, tile_size] tensor, through a per-channel table.
typedef struct NvlmTileWrite {
    NvlmResamplePass pass;
    uint64_t out;          // device address of the tensor
    uint64_t table;        // 3 x 256 elements of the output type
    uint32_t elem_bytes;   // 4 (f32) or 2 (bf16, f16)
    uint32_t tile_size;
    uint32_t tiles_across;
    uint32_t first_output;
} NvlmTileWrite;

// Kernels v2 (preprocess_fused), v3 (preprocess_staged) and v4
// (preprocess_staged_dp4a), one launch per image: both resize targets (the grid, the thumbnail), both passes, crop
// and normalisation. Each block makes one
// 32x32 patch of one target's resized image; blocks [first_block, next
// target's first_block) belong to a target, patch `b - first_block` in
// row-major order of ceil(out_width / 32) patches per row.
//
// The first pass runs along axis F, the second along axis S (F = x, S = y
// when horizontal first; F = y, S = x when vertical first). A one-pass
// resize or a copy gets an identity table (one tap of weight 1.0) for the
// axis that keeps its size, which is exact.
typedef struct NvlmFusedTarget {
    uint64_t first_f;      // uint32_t[out size along F]: first input index per output
    uint64_t count_f;      // uint32_t[...]: taps used per output
    uint64_t coeffs_f;     // int32_t[taps_f][out size along F]: tap-major; v4
                           // horizontal first and staged: byte planes (fused.rs)
    uint64_t first_s;      // the same for axis S, but
    uint64_t count_s;
    uint64_t coeffs_s;     // int32_t[out size along S][taps_s]: output-major
    uint32_t taps_f;       // rows of coeffs_f
    uint32_t taps_s;       // row length of coeffs_s
    uint32_t out_width;    // the resized image this target cuts tiles from
    uint32_t out_height;
    uint32_t vertical_first;
    uint32_t first_block;
    uint32_t tiles_across; // tiles per row of the resized image
    uint32_t first_output; // tensor index of its first tile
    // v3 and v4 only; chunk_samples = 0 runs v2's first pass
    // (a window too wide to stage). Shared memory: the intermediate's slab,
    // then from stage_offset C planes of stage_rows x stage_pitch input bytes
    // (rows are chunk samples when horizontal first, window rows otherwise).
    uint32_t chunk_samples; // samples along S per chunk
    uint32_t stage_rows;
    uint32_t stage_pitch;   // bytes per staged row
    uint32_t stage_offset;  // bytes from the start of shared memory
} NvlmFusedTarget;

// Threads a block of v2-v4 (one per group of four x pixels of a 32 x 32
// output patch). Like every THREADS below, the launch's block size and the
// kernel's __launch_bounds__ both come from it: the host emulation cannot
// see a launch past a kernel's bounds, which the GPU refuses.
#define NVLM_FUSED_PREPROCESS_THREADS 256

typedef struct NvlmFusedPreprocess {
    NvlmFusedTarget target[2];
    uint64_t src;          // device address of row 0 of the image
    uint64_t src_stride;   // bytes between image rows
    uint64_t out;          // [T, 3, tile_size, tile_size] tensor
    uint64_t table;        // 3 x 256 elements of the output type
    uint32_t src_bpp;      // bytes per image pixel: 1..4
    uint32_t channels;     // colour channels resampled: 1 or 3
    uint32_t elem_bytes;   // 4 (f32) or 2 (bf16, f16)
    uint32_t tile_size;
    uint32_t num_targets;  // 1 or 2
    uint32_t smem_bytes;   // dynamic shared memory per block (v2: all of it the slab)
} NvlmFusedPreprocess;

// ---- InternViT attention (kernels/attention.cu) ----

// Threads a block of the portable flash attention (8 warps of 16 query
// rows) and of the qk-RMSNorm.
#define NVLM_FLASH_ATTENTION_THREADS 256
#define NVLM_QK_RMS_NORM_THREADS 256

// One [B, N, H, D] tensor of 16-bit elements: element (b, n, h, d) is at
// ptr + 2 * (b * stride_batch + n * stride_token + h * stride_head + d).
// Strides are in elements; d is contiguous. The host guarantees 16-byte
// aligned rows (ptr % 16 == 0, strides % 8 == 0) and in-bounds indices.
typedef struct NvlmAttentionTensor {
    uint64_t ptr;
    int64_t stride_batch;
    int64_t stride_token;
    int64_t stride_head;
} NvlmAttentionTensor;

// Flash-attention forward, non-causal, no mask: o = softmax(q k^T * scale) v
// per (batch, head). Grid (query tiles, heads, batch); batch is gridDim.z.
typedef struct NvlmFlashAttention {
    NvlmAttentionTensor q;   // [B, q_len, H, D]
    NvlmAttentionTensor k;   // [B, kv_len, H, D]
    NvlmAttentionTensor v;   // [B, kv_len, H, D]
    NvlmAttentionTensor o;   // [B, q_len, H, D], written
    uint64_t lse;            // float[B, H, q_len] natural-log sum-exp, or 0 for none
    int32_t heads;
    int32_t q_len;
    int32_t kv_len;
    float scale_log2;        // softmax scale * log2(e)
} NvlmFlashAttention;

// InternViT-6B qk-RMSNorm, in place on the packed qkv rows
// [tokens, 3, heads_padded, D] (one block per token, gridDim.x = tokens).
// For q (at offset 0) and k (at part_stride): x * rsqrt(mean(x^2) + eps)
// over the first `width` = heads_real * D elements, times the weight.
typedef struct NvlmQkRmsNorm {
    uint64_t qkv;            // 16-bit elements
    uint64_t q_weight;       // [width], same element type
    uint64_t k_weight;       // [width]
    int64_t token_stride;    // elements between tokens (3 * heads_padded * D when packed)
    int64_t part_stride;     // elements from q to k (heads_padded * D)
    uint32_t width;          // heads_real * D, a multiple of 8
    float eps;
} NvlmQkRmsNorm;

#ifdef __cplusplus
static_assert(sizeof(NvlmResamplePass) == 72, "NvlmResamplePass layout");
static_assert(sizeof(NvlmIntermediate) == 80, "NvlmIntermediate layout");
static_assert(sizeof(NvlmTileWrite) == 104, "NvlmTileWrite layout");
static_assert(sizeof(NvlmFusedTarget) == 96, "NvlmFusedTarget layout");
static_assert(sizeof(NvlmFusedPreprocess) == 248, "NvlmFusedPreprocess layout");
static_assert(sizeof(NvlmAttentionTensor) == 32, "NvlmAttentionTensor layout");
static_assert(sizeof(NvlmFlashAttention) == 152, "NvlmFlashAttention layout");
static_assert(sizeof(NvlmQkRmsNorm) == 48, "NvlmQkRmsNorm layout");
#endif

// ---- Attention, sm_90a path (kernels/attention_hopper.cu) ----

// Q, K and V come through three CUtensorMap kernel parameters (4-D,
// d innermost, batch outermost, 64 x 1 x 128 x 1 boxes with the 128-byte
// swizzle); `*_tokens_inner` says whether dimension 1 of that map is the
// token (1) or the head (0). The output is [B, Nq, H, D] by element strides.
// Launch shape: grid (ceil(q_len / QUERY_ROWS), heads, batch), or for the
// persistent v4 a 1-D grid of at most one CTA per work item; THREADS
// threads, SMEM_BYTES_D<head_dim> bytes of dynamic shared memory (tiles
// plus 1024 bytes to reach the swizzle alignment).
#define NVLM_HOPPER_ATTENTION_THREADS 384
#define NVLM_HOPPER_ATTENTION_QUERY_ROWS 128
#define NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64 82944
#define NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128 164864
// setmaxnreg targets of the producer warpgroup (gives registers back) and
// the two consumer warpgroups (take them). They move within the block's
// allocation at launch, so the kernel must start with at least
// (PRODUCER * 128 + CONSUMER * 256) / THREADS = 168 registers a thread, or
// the consumers' setmaxnreg.inc waits forever; the launch checks this.
#define NVLM_HOPPER_ATTENTION_PRODUCER_REGISTERS 24
#define NVLM_HOPPER_ATTENTION_CONSUMER_REGISTERS 240

typedef struct NvlmHopperAttention {
    uint64_t o;              // device address of the output (d contiguous)
    uint64_t lse;            // f32 [batch, heads, q_len] natural-log LSE, or 0
    int64_t o_batch_stride;  // elements
    int64_t o_token_stride;
    int64_t o_head_stride;
    uint32_t batch;
    uint32_t heads;
    uint32_t q_len;
    uint32_t kv_len;
    float softmax_scale;
    uint32_t q_tokens_inner;
    uint32_t kv_tokens_inner;  // K and V share one layout
    uint32_t reserved;         // keeps the size a multiple of 8 on both sides
} NvlmHopperAttention;

#ifdef __cplusplus
static_assert(sizeof(NvlmHopperAttention) == 72, "NvlmHopperAttention layout");
#endif

// ---- Hopper primitive self-tests (kernels/hopper_selftest.cu) ----

// selftest_tma_round_trip: the box loaded at (load_x, load_y) of the source
// map is copied to box_out (box_width * box_height bf16, row-major) and
// TMA-stored at (store_x, store_y) of the destination map.
typedef struct NvlmTmaSelftest {
    uint64_t box_out;
    int32_t load_x;
    int32_t load_y;
    int32_t store_x;
    int32_t store_y;
    uint32_t box_width;
    uint32_t box_height;
} NvlmTmaSelftest;

// selftest_cluster_multicast (clusters of 2 CTAs, grid 2): CTA r loads
// the box at (x, y + r * box_height) of the source map into rows
// [r * box_height, (r + 1) * box_height) of both CTAs' tiles (multicast)
// and arrives on the other CTA's barrier; each CTA, once both boxes and
// the other's arrival are in, copies its tile (2 * box_height rows of
// box_width bf16) to out + rank * 2 * box_width * box_height.
typedef struct NvlmClusterSelftest {
    uint64_t out;
    int32_t x;
    int32_t y;
    uint32_t box_width;
    uint32_t box_height;
} NvlmClusterSelftest;

// selftest_mbarrier_pipeline: column sums and sums of squares of a
// [rows, 64] bf16 matrix, into out (128 f32).
typedef struct NvlmPipelineSelftest {
    uint64_t out;
    uint32_t rows;
    uint32_t reserved;     // keeps the size a multiple of 8 on both sides
} NvlmPipelineSelftest;

// selftest_wgmma_tile: c (64x64 f32) = a (64x64 bf16) * b (64x64 bf16)^T.
typedef struct NvlmWgmmaSelftest {
    uint64_t a;
    uint64_t b;
    uint64_t c;
} NvlmWgmmaSelftest;

// selftest_wgmma_swizzled: c (64x64 f32) = A * B^T from two tensor maps.
typedef struct NvlmWgmmaSwizzledSelftest {
    uint64_t c;
} NvlmWgmmaSwizzledSelftest;

// selftest_wgmma_rs: c (64x128 f32) = p (64x64 bf16, row-major) * V (map).
typedef struct NvlmWgmmaRsSelftest {
    uint64_t p;
    uint64_t c;
} NvlmWgmmaRsSelftest;

// selftest_tma_4d: one 4-D TMA load (128-byte swizzle) of the box at
// coords (innermost first), its 128 x 128 bytes of shared memory copied to
// out as they landed.
typedef struct NvlmTma4dSelftest {
    uint64_t out;
    int32_t coords[4];
} NvlmTma4dSelftest;

#ifdef __cplusplus
static_assert(sizeof(NvlmTma4dSelftest) == 24, "NvlmTma4dSelftest layout");
static_assert(sizeof(NvlmWgmmaSwizzledSelftest) == 8, "NvlmWgmmaSwizzledSelftest layout");
static_assert(sizeof(NvlmWgmmaRsSelftest) == 16, "NvlmWgmmaRsSelftest layout");
static_assert(sizeof(NvlmTmaSelftest) == 32, "NvlmTmaSelftest layout");
static_assert(sizeof(NvlmClusterSelftest) == 24, "NvlmClusterSelftest layout");
static_assert(sizeof(NvlmPipelineSelftest) == 16, "NvlmPipelineSelftest layout");
static_assert(sizeof(NvlmWgmmaSelftest) == 24, "NvlmWgmmaSelftest layout");
#endif

// ---- Projector (kernels/projector.cu) ----

// The most threads a block of the front takes (fewer for narrow rows), and
// the threads of a bias + GELU block.
#define NVLM_PROJECTOR_MAX_THREADS 256

// The projector's front: pixel_shuffle(0.5) of the InternViT last hidden
// state fused with LayerNorm over 4C. Output row r = t * (side/2)^2 + i *
// (side/2) + j is LayerNorm of cell (i, j) of tile t's shuffled grid; it is
// two runs of 2C contiguous input values (rows 2i and 2i+1 from column 2j
// for ps v2; rows 2j and 2j+1 from column 2i for v1, the transposed grid).
typedef struct NvlmProjectorFront {
    uint64_t input;           // [T, tokens_per_tile, C], bf16 or f16
    uint64_t gamma;           // [4C], same dtype
    uint64_t beta;            // [4C], same dtype
    uint64_t out;             // [rows, 4C], same dtype
    uint32_t channels;        // C
    uint32_t grid_side;       // side of the patch grid (32 at 448 px / patch 14); even
    uint32_t tokens_per_tile; // side^2, + 1 with a CLS token
    uint32_t first_token;     // 1 with a CLS token (skipped), else 0
    uint32_t transpose;       // 1 for ps_version v1
    uint32_t rows;            // T * (side/2)^2 = gridDim.x
    uint32_t row_width;       // 4C
    float eps;                // LayerNorm epsilon
} NvlmProjectorFront;

// In-place epilogue on a row-major [count / cols, cols] GEMM output:
// x += bias[col] (when bias != 0), then exact GELU (when gelu != 0).
typedef struct NvlmBiasGelu {
    uint64_t data;            // bf16 or f16
    uint64_t bias;            // [cols], same dtype, or 0
    uint64_t count;           // rows * cols
    uint32_t cols;
    uint32_t gelu;            // 1: x/2 * (1 + erf(x / sqrt 2)) after the bias
} NvlmBiasGelu;

#ifdef __cplusplus
static_assert(sizeof(NvlmProjectorFront) == 64, "NvlmProjectorFront layout");
static_assert(sizeof(NvlmBiasGelu) == 32, "NvlmBiasGelu layout");
#endif

// ---- Projector, sm_90a Linear (kernels/projector_hopper.cu) ----

// y[m, n] = act(x[m, k] · w[n, k]^T + bias[n]), act = exact erf GELU or
// none; x and w come through two CUtensorMap kernel parameters (2-D, k
// innermost, 128-byte swizzle; x in boxes of 64 x BLOCK_M, w in boxes of
// 64 x BLOCK_N / CLUSTER_M), y is row-major with n elements a row. BLOCK_N,
// the output tile's width, is WIDE (entries linear_hopper_n256_*) or
// NARROW (linear_hopper_n224_*), SMEM_BYTES_WIDE or _NARROW with it.
// Launch shape: grid (ceil(m / BLOCK_M) rounded up to a multiple of
// CLUSTER_M, ceil(n / BLOCK_N)), clusters of CLUSTER_M CTAs along x
// (compiled in), THREADS threads, SMEM_BYTES bytes of dynamic shared memory
// (the stages, their barriers and 1024 bytes to reach the swizzle
// alignment).
#define NVLM_HOPPER_LINEAR_THREADS 384
#define NVLM_HOPPER_LINEAR_BLOCK_M 128
#define NVLM_HOPPER_LINEAR_BLOCK_N_WIDE 256
#define NVLM_HOPPER_LINEAR_BLOCK_N_NARROW 224
#define NVLM_HOPPER_LINEAR_BLOCK_K 64
#define NVLM_HOPPER_LINEAR_STAGES 4
#define NVLM_HOPPER_LINEAR_CLUSTER_M 2
#define NVLM_HOPPER_LINEAR_SMEM_BYTES_WIDE 197696
#define NVLM_HOPPER_LINEAR_SMEM_BYTES_NARROW 181312
// setmaxnreg targets, as the attention kernel's: the kernel must start
// with at least (PRODUCER * 128 + CONSUMER * 256) / THREADS = 168 registers.
#define NVLM_HOPPER_LINEAR_PRODUCER_REGISTERS 24
#define NVLM_HOPPER_LINEAR_CONSUMER_REGISTERS 240

typedef struct NvlmHopperLinear {
    uint64_t y;     // device address of the output, bf16 or f16
    uint64_t bias;  // [n], same dtype, or 0
    uint32_t m;
    uint32_t n;     // even: the output is stored in pairs
    uint32_t k;
    uint32_t gelu;  // 1: x/2 * (1 + erf(x / sqrt 2)) after the bias
} NvlmHopperLinear;

#ifdef __cplusplus
static_assert(sizeof(NvlmHopperLinear) == 32, "NvlmHopperLinear layout");
#endif
