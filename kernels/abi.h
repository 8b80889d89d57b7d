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

// ---- InternViT attention (kernels/attention.cu) ----

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
static_assert(sizeof(NvlmAttentionTensor) == 32, "NvlmAttentionTensor layout");
static_assert(sizeof(NvlmFlashAttention) == 152, "NvlmFlashAttention layout");
static_assert(sizeof(NvlmQkRmsNorm) == 48, "NvlmQkRmsNorm layout");
#endif
