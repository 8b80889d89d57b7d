// DHR preprocessing: Pillow-exact bicubic resize (22-bit fixed point, int32
// accumulation, uint8 intermediate), crop into tiles, ToTensor + Normalize.
//
// v1, correctness first: one thread per output pixel, one launch per pass.
// A two-pass resize is `resample_to_intermediate` then `resample_to_tiles`;
// a one-pass resize (or a copy, run as an identity pass, which Pillow's
// coefficients make exact) is `resample_to_tiles` alone. The tables come
// from the host (AxisCoefficients), so the weights are Pillow's to the bit.
#include "abi.h"

namespace {

constexpr int kPrecisionBits = 22;

__device__ __forceinline__ uint8_t clip8(int32_t acc) {
    return static_cast<uint8_t>(min(max(acc >> kPrecisionBits, 0), 255));
}

// Resamples pixel (x, y) of the pass's destination, C channels. C is a
// template argument so the accumulators stay in registers.
template <int C>
__device__ __forceinline__ void resample_pixel(const NvlmResamplePass& p, uint32_t x, uint32_t y,
                                               uint8_t out[C]) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(p.src);
    const uint32_t* first = reinterpret_cast<const uint32_t*>(p.first);
    const uint32_t* count = reinterpret_cast<const uint32_t*>(p.count);
    const int32_t* coeffs = reinterpret_cast<const int32_t*>(p.coeffs);
    const uint32_t o = p.vertical ? y : x;
    const int32_t* k = coeffs + static_cast<uint64_t>(o) * p.taps;
    const uint32_t start = first[o];
    const uint32_t n = count[o];
    int32_t acc[C];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] = 1 << (kPrecisionBits - 1);
    for (uint32_t t = 0; t < n; ++t) {
        const uint64_t sx = p.vertical ? x : start + t;
        const uint64_t sy = p.vertical ? start + t : y;
        const uint8_t* px = src + sy * p.src_stride + sx * p.src_bpp;
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(px[c]) * k[t];
    }
#pragma unroll
    for (int c = 0; c < C; ++c) out[c] = clip8(acc[c]);
}

template <int C>
__device__ __forceinline__ void write_intermediate(const NvlmIntermediate& p, uint32_t x, uint32_t y) {
    uint8_t px[C];
    resample_pixel<C>(p.pass, x, y, px);
    uint8_t* dst = reinterpret_cast<uint8_t*>(p.dst) + (static_cast<uint64_t>(y) * p.pass.dst_width + x) * C;
#pragma unroll
    for (int c = 0; c < C; ++c) dst[c] = px[c];
}

template <int C, typename T>
__device__ __forceinline__ void write_tiles(const NvlmTileWrite& p, uint32_t x, uint32_t y) {
    uint8_t px[C];
    resample_pixel<C>(p.pass, x, y, px);
    const uint64_t ts = p.tile_size;
    const uint64_t tile = p.first_output + (y / ts) * p.tiles_across + x / ts;
    const uint64_t plane = ts * ts;
    const uint64_t within = (y % ts) * ts + x % ts;
    const T* table = reinterpret_cast<const T*>(p.table);
    T* out = reinterpret_cast<T*>(p.out);
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        // A grey source has one channel, which feeds all three planes.
        out[(tile * 3 + c) * plane + within] = table[c * 256 + px[C == 3 ? c : 0]];
    }
}

}  // namespace

// Both kernels: one thread per destination pixel; x from the grid, y
// strided, since an intermediate can have more rows than gridDim.y allows.
extern "C" __global__ void resample_to_intermediate(const NvlmIntermediate p) {
    const uint32_t x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= p.pass.dst_width) return;
    for (uint32_t y = blockIdx.y * blockDim.y + threadIdx.y; y < p.pass.dst_height; y += gridDim.y * blockDim.y) {
        if (p.pass.channels == 3) {
            write_intermediate<3>(p, x, y);
        } else {
            write_intermediate<1>(p, x, y);
        }
    }
}

// Table entries are copied as bits, so f32, bf16 and f16 need two widths only.
extern "C" __global__ void resample_to_tiles(const NvlmTileWrite p) {
    const uint32_t x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= p.pass.dst_width) return;
    for (uint32_t y = blockIdx.y * blockDim.y + threadIdx.y; y < p.pass.dst_height; y += gridDim.y * blockDim.y) {
        if (p.elem_bytes == 4) {
            if (p.pass.channels == 3) write_tiles<3, uint32_t>(p, x, y); else write_tiles<1, uint32_t>(p, x, y);
        } else {
            if (p.pass.channels == 3) write_tiles<3, uint16_t>(p, x, y); else write_tiles<1, uint16_t>(p, x, y);
        }
    }
}
