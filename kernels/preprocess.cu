// DHR preprocessing: Pillow-exact bicubic resize (22-bit fixed point, int32
// accumulation, uint8 intermediate), crop into tiles, ToTensor + Normalize.
//
// Four versions, all kept so one GPU run can compare them (the host picks
// one with `PreprocessKernel`): v1 first, then the fused v2 and its
// variants v3 and v4, whose entry points end this file.
//
// v1, correctness first: one thread per output pixel, one launch per pass.
// A two-pass resize is `resample_to_intermediate` then `resample_to_tiles`;
// a one-pass resize (or a copy, run as an identity pass, which Pillow's
// coefficients make exact) is `resample_to_tiles` alone. The tables come
// from the host (AxisCoefficients), so the weights are Pillow's to the bit.
#include "abi.h"
#include "common/ptx.cuh"

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

// Both kernels: one thread per destination pixel. The plan's size limits
// keep a pass's rows within gridDim.y's cap (src/preprocess/gpu/two_pass.rs).
extern "C" __global__ void resample_to_intermediate(const NvlmIntermediate p) {
    const uint32_t x = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.pass.dst_width || y >= p.pass.dst_height) return;
    if (p.pass.channels == 3) {
        write_intermediate<3>(p, x, y);
    } else {
        write_intermediate<1>(p, x, y);
    }
}

// Table entries are copied as bits, so f32, bf16 and f16 need two widths only.
extern "C" __global__ void resample_to_tiles(const NvlmTileWrite p) {
    const uint32_t x = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.pass.dst_width || y >= p.pass.dst_height) return;
    if (p.elem_bytes == 4) {
        if (p.pass.channels == 3) write_tiles<3, uint32_t>(p, x, y); else write_tiles<1, uint32_t>(p, x, y);
    } else {
        if (p.pass.channels == 3) write_tiles<3, uint16_t>(p, x, y); else write_tiles<1, uint16_t>(p, x, y);
    }
}

// v2: one launch per image. A block makes one 32x32 patch of the resized
// image of one target (grid or thumbnail; see NvlmFusedTarget): it runs the
// first pass for exactly the intermediate samples the patch's second pass
// reads, staged as uint8 in shared memory, then the second pass, the crop
// and the normalisation table, and writes the patch's tile pixels.
//
// Shared memory is bounded for any scale: the intermediate's extent along
// the second pass's axis (the "window", ~32 x scale + taps samples) is
// processed in chunks, and every output accumulates the taps that fall in
// each chunk. The sum is the same int32 sum in another order (two's-
// complement addition is associative), so the bytes are Pillow's whatever
// the chunking.
//
// v3 (preprocess_staged) differs in the first pass only. v2's reads the
// image straight from global memory with a warp's lanes on consecutive
// outputs, so one tap's byte loads span 3 x scale x 32 bytes of a row. v3
// first copies the chunk's input region into shared memory (coalesced,
// channel-planar), then gives each warp one output and its lanes
// consecutive samples: one weight per tap for the whole warp, and 32 byte
// loads in 32 different banks. A target whose window is too wide to stage
// (chunk_samples = 0, decided on the host) takes v2's first pass.
//
// v4 (preprocess_staged_dp4a) differs from v3 in the horizontal-first
// staged first pass only: four taps a word and dp4a (first_pass_words).
namespace {

constexpr uint32_t kPatch = 32;                           // patch side, output pixels
constexpr uint32_t kGroup = 4;                            // consecutive x pixels per thread
constexpr uint32_t kGroupsAcross = kPatch / kGroup;       // 8
constexpr uint32_t kFusedThreads = kGroupsAcross * kPatch;  // 256: one thread per group
static_assert(kFusedThreads == NVLM_FUSED_PREPROCESS_THREADS, "abi.h's block size");
constexpr uint32_t kFusedWarps = kFusedThreads / 32;

// Byte offset of intermediate sample (s_local, f_local) in the slab, laid
// out so that the first pass's lanes write distinct banks: horizontal
// first, rows of `pitch` bytes per s (v3's lanes step along s, so its pitch
// is an odd number of words); vertical first, [f][s] with `rows` samples.
template <int C, bool kVerticalFirst>
__device__ __forceinline__ uint32_t slab_offset(uint32_t s_local, uint32_t f_local, uint32_t rows,
                                                uint32_t pitch) {
    return kVerticalFirst ? (f_local * rows + s_local) * C : s_local * pitch + f_local * C;
}

// Four table entries stored as one vector: 16 bytes for f32, 8 for 16-bit.
__device__ __forceinline__ void store4(uint32_t* dst, const uint32_t (&v)[kGroup]) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(uint16_t* dst, const uint16_t (&v)[kGroup]) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(v[0] | (uint32_t(v[1]) << 16), v[2] | (uint32_t(v[3]) << 16));
}

// A block's patch, along F (first pass) and S (second pass).
struct PatchSpan {
    uint32_t f0, nf;  // first output along F, outputs (<= 32)
    uint32_t out_f;   // the resized image's size along F
    uint32_t c0, n;   // this chunk's intermediate samples along S
};

// v2's first pass: slab (s, f) for s in [c0, c0 + n), f in [f0, f0 + nf),
// read from the image in global memory.
template <int C, bool kVerticalFirst>
__device__ __forceinline__ void first_pass_global(const NvlmFusedPreprocess& p, const NvlmFusedTarget& t,
                                                  const PatchSpan& span, uint8_t* slab, uint32_t rows,
                                                  uint32_t slab_pitch) {
    const uint32_t* first_f = reinterpret_cast<const uint32_t*>(t.first_f);
    const uint32_t* count_f = reinterpret_cast<const uint32_t*>(t.count_f);
    const int32_t* coeffs_f = reinterpret_cast<const int32_t*>(t.coeffs_f);
    const uint8_t* src = reinterpret_cast<const uint8_t*>(p.src);
    const uint32_t n = span.n;
    for (uint32_t i = threadIdx.x; i < n * kPatch; i += kFusedThreads) {
        const uint32_t f_local = kVerticalFirst ? i / n : i % kPatch;
        const uint32_t s_local = kVerticalFirst ? i % n : i / kPatch;
        if (f_local >= span.nf) continue;
        const uint32_t f = span.f0 + f_local;
        const uint32_t s = span.c0 + s_local;
        const uint32_t start = __ldg(first_f + f);
        const uint32_t taps = __ldg(count_f + f);
        // coeffs_f is tap-major: a warp's consecutive f read one line per tap.
        const int32_t* k = coeffs_f + f;
        // Along F the image advances by rows (vertical first) or pixels.
        const uint64_t step = kVerticalFirst ? p.src_stride : p.src_bpp;
        const uint8_t* px = src + (kVerticalFirst ? static_cast<uint64_t>(start) * p.src_stride +
                                                        static_cast<uint64_t>(s) * p.src_bpp
                                                  : static_cast<uint64_t>(s) * p.src_stride +
                                                        static_cast<uint64_t>(start) * p.src_bpp);
        int32_t a[C];
#pragma unroll
        for (int c = 0; c < C; ++c) a[c] = 1 << (kPrecisionBits - 1);
        for (uint32_t tap = 0; tap < taps; ++tap, px += step) {
            const int32_t w = __ldg(k + static_cast<uint64_t>(tap) * span.out_f);
#pragma unroll
            for (int c = 0; c < C; ++c) a[c] += static_cast<int32_t>(__ldg(px + c)) * w;
        }
        uint8_t* d = slab + slab_offset<C, kVerticalFirst>(s_local, f_local, rows, slab_pitch);
#pragma unroll
        for (int c = 0; c < C; ++c) d[c] = clip8(a[c]);
    }
}

// v3's copy of image rows [r0, r0 + nr) x pixels [q0, q0 + nq) into C
// planes of `plane` bytes, row r at r * pitch: lanes on consecutive pixels,
// so a warp's loads of one channel cover 32 x bpp contiguous bytes.
template <int C>
__device__ __forceinline__ void stage_input(const NvlmFusedPreprocess& p, uint8_t* stage, uint32_t plane,
                                            uint32_t pitch, uint32_t r0, uint32_t nr, uint32_t q0,
                                            uint32_t nq) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(p.src);
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (uint32_t r = warp; r < nr; r += kFusedWarps) {
        const uint8_t* row = src + static_cast<uint64_t>(r0 + r) * p.src_stride + static_cast<uint64_t>(q0) * p.src_bpp;
        for (uint32_t q = lane; q < nq; q += 32) {
            const uint8_t* px = row + static_cast<uint64_t>(q) * p.src_bpp;
#pragma unroll
            for (int c = 0; c < C; ++c) stage[c * plane + r * pitch + q] = __ldg(px + c);
        }
    }
}

// v3's first pass, from the staged input whose F window starts at input
// index fa: each warp takes outputs f, its lanes consecutive samples s.
template <int C, bool kVerticalFirst>
__device__ __forceinline__ void first_pass_staged(const NvlmFusedTarget& t, const PatchSpan& span,
                                                  uint32_t fa, const uint8_t* stage, uint32_t plane,
                                                  uint8_t* slab, uint32_t rows, uint32_t slab_pitch) {
    const uint32_t* first_f = reinterpret_cast<const uint32_t*>(t.first_f);
    const uint32_t* count_f = reinterpret_cast<const uint32_t*>(t.count_f);
    const int32_t* coeffs_f = reinterpret_cast<const int32_t*>(t.coeffs_f);
    const uint32_t pitch = t.stage_pitch;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (uint32_t f_local = warp; f_local < span.nf; f_local += kFusedWarps) {
        const uint32_t f = span.f0 + f_local;
        const uint32_t start = __ldg(first_f + f) - fa;
        const uint32_t taps = __ldg(count_f + f);
        const int32_t* k = coeffs_f + f;
        for (uint32_t s_local = lane; s_local < span.n; s_local += 32) {
            // Along F the staged input advances by a row (vertical first)
            // or a byte.
            const uint8_t* px = stage + (kVerticalFirst ? start * pitch + s_local : s_local * pitch + start);
            int32_t a[C];
#pragma unroll
            for (int c = 0; c < C; ++c) a[c] = 1 << (kPrecisionBits - 1);
            for (uint32_t tap = 0; tap < taps; ++tap, px += kVerticalFirst ? pitch : 1) {
                const int32_t w = __ldg(k + static_cast<uint64_t>(tap) * span.out_f);
#pragma unroll
                for (int c = 0; c < C; ++c) a[c] += static_cast<int32_t>(px[c * plane]) * w;
            }
            uint8_t* d = slab + slab_offset<C, kVerticalFirst>(s_local, f_local, rows, slab_pitch);
#pragma unroll
            for (int c = 0; c < C; ++c) d[c] = clip8(a[c]);
        }
    }
}

// v4's first pass, horizontal first: v3's with four taps at a time. A
// staged row is contiguous along F, so one 32-bit word holds four taps'
// bytes of a channel: two aligned words and a funnel shift by the window's
// start modulo 4 (the same for the whole warp, whose lanes take samples of
// one output). The host lays the weights out as byte planes (coeffs_f word
// (4g + j) x out_f + f holds byte j of output f's taps 4g .. 4g + 3, taps
// past its count zero), so four taps are four dp4a, one per plane. The sums
// are taken modulo 2^32, where plane j weighs 2^(8j): the residue of
// Pillow's int32 sum, which never overflows, hence its value. Reads run up
// to 7 bytes past the window, times zero weights, inside the staged rows or
// the 8 bytes of slack after them.
template <int C>
__device__ __forceinline__ void first_pass_words(const NvlmFusedTarget& t, const PatchSpan& span, uint32_t fa,
                                                 const uint8_t* stage, uint32_t plane, uint8_t* slab,
                                                 uint32_t rows, uint32_t slab_pitch) {
    const uint32_t* first_f = reinterpret_cast<const uint32_t*>(t.first_f);
    const uint32_t* count_f = reinterpret_cast<const uint32_t*>(t.count_f);
    const uint32_t* planes = reinterpret_cast<const uint32_t*>(t.coeffs_f);
    const uint32_t pitch = t.stage_pitch;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (uint32_t f_local = warp; f_local < span.nf; f_local += kFusedWarps) {
        const uint32_t f = span.f0 + f_local;
        const uint32_t start = __ldg(first_f + f) - fa;
        const uint32_t groups = (__ldg(count_f + f) + 3) / 4;
        const uint32_t shift = 8 * (start % 4);
        const uint32_t* k = planes + f;
        for (uint32_t s_local = lane; s_local < span.n; s_local += 32) {
            // The pitch and the planes are whole words, so the row's words
            // are aligned; the window starts `shift` bits into the first.
            const uint32_t* words = reinterpret_cast<const uint32_t*>(stage + s_local * pitch + (start & ~3u));
            uint32_t sum[C][4], low[C];
#pragma unroll
            for (int c = 0; c < C; ++c) {
                low[c] = words[c * (plane / 4)];
#pragma unroll
                for (int j = 0; j < 4; ++j) sum[c][j] = 0;
            }
            for (uint32_t g = 0; g < groups; ++g) {
                uint32_t w[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) w[j] = __ldg(k + static_cast<uint64_t>(4 * g + j) * span.out_f);
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    const uint32_t high = words[c * (plane / 4) + g + 1];
                    const uint32_t taps4 = __funnelshift_r(low[c], high, shift);
#pragma unroll
                    for (int j = 0; j < 4; ++j) sum[c][j] = __dp4a(taps4, w[j], sum[c][j]);
                    low[c] = high;
                }
            }
            uint8_t* d = slab + slab_offset<C, false>(s_local, f_local, rows, slab_pitch);
#pragma unroll
            for (int c = 0; c < C; ++c) {
                const uint32_t a = (1u << (kPrecisionBits - 1)) + sum[c][0] + (sum[c][1] << 8) +
                                   (sum[c][2] << 16) + (sum[c][3] << 24);
                d[c] = clip8(static_cast<int32_t>(a));
            }
        }
    }
}

template <int C, bool kVerticalFirst, bool kStaged, typename E, bool kWordTaps>
__device__ __forceinline__ void fused_patch(const NvlmFusedPreprocess& p, const NvlmFusedTarget& t,
                                            uint32_t patch, uint8_t* smem) {
    const uint32_t patches_across = (t.out_width + kPatch - 1) / kPatch;
    const uint32_t x0 = (patch % patches_across) * kPatch;
    const uint32_t y0 = (patch / patches_across) * kPatch;
    PatchSpan span;
    span.f0 = kVerticalFirst ? y0 : x0;
    const uint32_t s0 = kVerticalFirst ? x0 : y0;
    span.out_f = kVerticalFirst ? t.out_height : t.out_width;
    span.nf = min(kPatch, span.out_f - span.f0);
    const uint32_t ns = min(kPatch, (kVerticalFirst ? t.out_width : t.out_height) - s0);

    const uint32_t* first_s = reinterpret_cast<const uint32_t*>(t.first_s);
    const uint32_t* count_s = reinterpret_cast<const uint32_t*>(t.count_s);
    const int32_t* coeffs_s = reinterpret_cast<const int32_t*>(t.coeffs_s);

    // The input samples along S the patch reads: first/end are monotone in
    // the output index, so the patch's first and last outputs bound them.
    // The same holds along F for v3's staged window [fa, fb).
    const uint32_t w0 = __ldg(first_s + s0);
    const uint32_t w1 = __ldg(first_s + s0 + ns - 1) + __ldg(count_s + s0 + ns - 1);
    const uint32_t rows = kStaged ? t.chunk_samples : p.smem_bytes / (kPatch * C);
    const uint32_t slab_pitch = kStaged ? kPatch * C + 4 : kPatch * C;
    [[maybe_unused]] uint32_t fa = 0, fb = 0;
    if constexpr (kStaged) {
        const uint32_t* first_f = reinterpret_cast<const uint32_t*>(t.first_f);
        const uint32_t* count_f = reinterpret_cast<const uint32_t*>(t.count_f);
        const uint32_t last = span.f0 + span.nf - 1;
        fa = __ldg(first_f + span.f0);
        fb = __ldg(first_f + last) + __ldg(count_f + last);
    }
    uint8_t* slab = smem;
    uint8_t* stage = smem + t.stage_offset;
    const uint32_t plane = t.stage_rows * t.stage_pitch;

    // This thread's outputs: pixels x .. x+3 of row y of the resized image.
    const uint32_t gx = threadIdx.x % kGroupsAcross;
    const uint32_t y = y0 + threadIdx.x / kGroupsAcross;
    const uint32_t x = x0 + gx * kGroup;
    const bool row_valid = y < t.out_height;
    int32_t acc[kGroup][C];
#pragma unroll
    for (uint32_t j = 0; j < kGroup; ++j)
#pragma unroll
        for (int c = 0; c < C; ++c) acc[j][c] = 1 << (kPrecisionBits - 1);

    for (uint32_t c0 = w0; c0 < w1; c0 += rows) {  // block-uniform bounds
        span.c0 = c0;
        span.n = min(rows, w1 - c0);
        const uint32_t n = span.n;
        if constexpr (kStaged) {
            if (kVerticalFirst) {
                stage_input<C>(p, stage, plane, t.stage_pitch, fa, fb - fa, c0, n);
            } else {
                stage_input<C>(p, stage, plane, t.stage_pitch, c0, n, fa, fb - fa);
            }
            __syncthreads();
            if constexpr (kWordTaps && !kVerticalFirst) {
                first_pass_words<C>(t, span, fa, stage, plane, slab, rows, slab_pitch);
            } else {
                first_pass_staged<C, kVerticalFirst>(t, span, fa, stage, plane, slab, rows, slab_pitch);
            }
        } else {
            first_pass_global<C, kVerticalFirst>(p, t, span, slab, rows, slab_pitch);
        }
        __syncthreads();
        // Second pass: each output adds the taps of its window in this chunk.
        if (row_valid) {
            if constexpr (kVerticalFirst) {
                // F = y, S = x: the four outputs have four windows.
                const uint32_t f_local = y - y0;
#pragma unroll
                for (uint32_t j = 0; j < kGroup; ++j) {
                    const uint32_t s = x + j;
                    if (s >= t.out_width) continue;
                    const uint32_t fs = __ldg(first_s + s);
                    const uint32_t lo = max(fs, c0);
                    const uint32_t hi = min(fs + __ldg(count_s + s), c0 + n);
                    const int32_t* k = coeffs_s + static_cast<uint64_t>(s) * t.taps_s;
                    for (uint32_t r = lo; r < hi; ++r) {
                        const int32_t w = __ldg(k + (r - fs));
                        const uint8_t* px = slab + slab_offset<C, true>(r - c0, f_local, rows, slab_pitch);
#pragma unroll
                        for (int c = 0; c < C; ++c) acc[j][c] += static_cast<int32_t>(px[c]) * w;
                    }
                }
            } else {
                // F = x, S = y: the four outputs share one window and its weights.
                const uint32_t fs = __ldg(first_s + y);
                const uint32_t lo = max(fs, c0);
                const uint32_t hi = min(fs + __ldg(count_s + y), c0 + n);
                const int32_t* k = coeffs_s + static_cast<uint64_t>(y) * t.taps_s;
                for (uint32_t r = lo; r < hi; ++r) {
                    const int32_t w = __ldg(k + (r - fs));
                    // The group's 4 x C bytes are contiguous and 4-byte aligned
                    // (the pitch is a multiple of 4, the group starts at
                    // 4 x C x gx): C word loads instead of 4 x C byte loads.
                    const uint32_t* words = reinterpret_cast<const uint32_t*>(
                        slab + slab_offset<C, false>(r - c0, x - x0, rows, slab_pitch));
                    uint32_t packed[C];
#pragma unroll
                    for (int q = 0; q < C; ++q) packed[q] = words[q];
#pragma unroll
                    for (uint32_t j = 0; j < kGroup; ++j) {
#pragma unroll
                        for (int c = 0; c < C; ++c) {
                            const uint32_t b = j * C + c;
                            acc[j][c] += static_cast<int32_t>((packed[b / 4] >> (8 * (b % 4))) & 0xFF) * w;
                        }
                    }
                }
            }
        }
        __syncthreads();  // the next chunk overwrites the slab and the staged input
    }

    if (!row_valid) return;
    // Crop and normalise. With tile_size % 4 == 0 the group lies in one tile
    // row at an element offset divisible by 4: one vector store per plane.
    const E* table = reinterpret_cast<const E*>(p.table);
    E* out = reinterpret_cast<E*>(p.out);
    const uint64_t ts = p.tile_size;
    const uint64_t plane_elems = ts * ts;
    if (ts % kGroup == 0 && x + kGroup <= t.out_width) {
        const uint64_t tile = t.first_output + (y / ts) * t.tiles_across + x / ts;
        const uint64_t within = (y % ts) * ts + x % ts;
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            E v[kGroup];
#pragma unroll
            for (uint32_t j = 0; j < kGroup; ++j) v[j] = __ldg(table + c * 256 + clip8(acc[j][C == 3 ? c : 0]));
            store4(out + (tile * 3 + c) * plane_elems + within, v);
        }
    } else {
#pragma unroll
        for (uint32_t j = 0; j < kGroup; ++j) {
            if (x + j >= t.out_width) continue;
            const uint64_t tile = t.first_output + (y / ts) * t.tiles_across + (x + j) / ts;
            const uint64_t within = (y % ts) * ts + (x + j) % ts;
#pragma unroll
            for (int c = 0; c < 3; ++c)
                out[(tile * 3 + c) * plane_elems + within] = __ldg(table + c * 256 + clip8(acc[j][C == 3 ? c : 0]));
        }
    }
}

template <int C, bool kStaged, bool kWordTaps>
__device__ __forceinline__ void fused_dispatch(const NvlmFusedPreprocess& p, const NvlmFusedTarget& t,
                                               uint32_t patch, uint8_t* smem) {
    if (t.vertical_first) {
        if (p.elem_bytes == 4) fused_patch<C, true, kStaged, uint32_t, kWordTaps>(p, t, patch, smem);
        else fused_patch<C, true, kStaged, uint16_t, kWordTaps>(p, t, patch, smem);
    } else {
        if (p.elem_bytes == 4) fused_patch<C, false, kStaged, uint32_t, kWordTaps>(p, t, patch, smem);
        else fused_patch<C, false, kStaged, uint16_t, kWordTaps>(p, t, patch, smem);
    }
}

// One block per patch of either target; blocks of the second target follow
// the first's. v3 and v4 stage a target's input when the host gave it a
// chunk; v4 (kWordTaps) then reads four taps a word when horizontal first.
template <bool kStagedKernel, bool kWordTaps>
__device__ __forceinline__ void fused_block(const NvlmFusedPreprocess& p) {
    uint8_t* smem = nvlm::dynamic_smem();
    // Field by field rather than p.target[i], which would copy the
    // parameter array to local memory.
    const bool second = p.num_targets == 2 && blockIdx.x >= p.target[1].first_block;
    const NvlmFusedTarget t = second ? p.target[1] : p.target[0];
    const uint32_t patch = blockIdx.x - t.first_block;
    const bool staged = kStagedKernel && t.chunk_samples != 0;
    if (p.channels == 3) {
        if (staged) fused_dispatch<3, true, kWordTaps>(p, t, patch, smem);
        else fused_dispatch<3, false, false>(p, t, patch, smem);
    } else {
        if (staged) fused_dispatch<1, true, kWordTaps>(p, t, patch, smem);
        else fused_dispatch<1, false, false>(p, t, patch, smem);
    }
}

}  // namespace

// 256 threads, `smem_bytes` of dynamic shared memory, one block per patch.
extern "C" __global__ void __launch_bounds__(kFusedThreads, 2) preprocess_fused(const NvlmFusedPreprocess p) {
    fused_block<false, false>(p);
}

extern "C" __global__ void __launch_bounds__(kFusedThreads, 2) preprocess_staged(const NvlmFusedPreprocess p) {
    fused_block<true, false>(p);
}

extern "C" __global__ void __launch_bounds__(kFusedThreads, 2)
    preprocess_staged_dp4a(const NvlmFusedPreprocess p) {
    fused_block<true, true>(p);
}
