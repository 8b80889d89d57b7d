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

// ---- Projector (kernels/projector.cu) ----

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
static_assert(sizeof(NvlmResamplePass) == 72, "NvlmResamplePass layout");
static_assert(sizeof(NvlmIntermediate) == 80, "NvlmIntermediate layout");
static_assert(sizeof(NvlmTileWrite) == 104, "NvlmTileWrite layout");
static_assert(sizeof(NvlmProjectorFront) == 64, "NvlmProjectorFront layout");
static_assert(sizeof(NvlmBiasGelu) == 32, "NvlmBiasGelu layout");
#endif
