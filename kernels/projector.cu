// The projector's memory-bound kernels (its GEMMs run in cuBLASLt):
//
// - projector_front_*: pixel_shuffle(0.5) of the InternViT last hidden state
//   fused with LayerNorm over 4C. One block per output row; the row (two
//   runs of 2C contiguous input values) is read once into registers, reduced
//   twice (mean, then the mean squared deviation: two-pass, f32), normalised
//   and written once. `_v8xN`: 16-byte accesses (C % 8 == 0, 16-byte aligned
//   buffers), N chunks of 8 per thread; `_s1x8`: one element per access,
//   for any C up to 512 (test sizes, misaligned views).
// - bias_gelu_*: x += bias[col], then the exact erf GELU, in place on a
//   row-major GEMM output (cuBLASLt's GELU epilogue is not the erf GELU the
//   models use). `_v8`: 16-byte accesses; `_s1`: scalar.
//
// Elements travel as raw 16-bit patterns; arithmetic is f32.
#include "abi.h"
#include "common/gelu.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

struct Bf16 {};
struct F16 {};

template <typename T> __device__ __forceinline__ float to_f32(uint32_t bits);
template <> __device__ __forceinline__ float to_f32<Bf16>(uint32_t bits) {
    return __uint_as_float(bits << 16);
}
template <> __device__ __forceinline__ float to_f32<F16>(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}

// Round to nearest even, as torch's `.to(dtype)`.
template <typename T> __device__ __forceinline__ uint32_t from_f32(float v);
template <> __device__ __forceinline__ uint32_t from_f32<Bf16>(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <> __device__ __forceinline__ uint32_t from_f32<F16>(float v) {
    return __half_as_ushort(__float2half_rn(v));
}

// VEC consecutive 16-bit elements: one 16-byte access for VEC == 8.
template <int VEC> struct Chunk {
    static_assert(VEC == 8 || VEC == 1, "chunks are 8 elements or 1");
    uint32_t w[VEC == 8 ? 4 : 1];
};

template <int VEC> __device__ __forceinline__ uint32_t element(const Chunk<VEC>& c, int e) {
    if constexpr (VEC == 8) {
        return (c.w[e >> 1] >> ((e & 1) * 16)) & 0xffffu;
    } else {
        return c.w[0];
    }
}

template <int VEC> __device__ __forceinline__ void set_element(Chunk<VEC>& c, int e, uint32_t bits) {
    if constexpr (VEC == 8) {
        c.w[e >> 1] |= bits << ((e & 1) * 16);
    } else {
        c.w[0] = bits;
    }
}

// Through the read-only cache: only for buffers no thread of the launch writes.
template <int VEC> __device__ __forceinline__ Chunk<VEC> load_readonly(const uint16_t* p) {
    Chunk<VEC> c;
    if constexpr (VEC == 8) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        c.w[0] = v.x;
        c.w[1] = v.y;
        c.w[2] = v.z;
        c.w[3] = v.w;
    } else {
        c.w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
    }
    return c;
}

template <int VEC> __device__ __forceinline__ Chunk<VEC> load(const uint16_t* p) {
    Chunk<VEC> c;
    if constexpr (VEC == 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        c.w[0] = v.x;
        c.w[1] = v.y;
        c.w[2] = v.z;
        c.w[3] = v.w;
    } else {
        c.w[0] = *p;
    }
    return c;
}

template <int VEC> __device__ __forceinline__ void store(uint16_t* p, const Chunk<VEC>& c) {
    if constexpr (VEC == 8) {
        *reinterpret_cast<uint4*>(p) = make_uint4(c.w[0], c.w[1], c.w[2], c.w[3]);
    } else {
        *p = static_cast<uint16_t>(c.w[0]);
    }
}

// Sum over the block (blockDim.x a multiple of 32, every thread calling);
// every thread gets the total, summed in the same order in every thread.
// `partial` is used once per call site, so no barrier is needed after it.
__device__ __forceinline__ float block_sum(float v, float* partial) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.f;
    const uint32_t warps = blockDim.x >> 5;
    for (uint32_t w = 0; w < warps; ++w) total += partial[w];
    return total;
}

// One output row per block; chunk q of the row (elements q*VEC ..) is
// handled by thread q % blockDim.x, in register slot q / blockDim.x.
// The host launches rows blocks of ceil(row_width / VEC / VPT) threads
// rounded up to a multiple of 32 (at most 256).
template <typename T, int VEC, int VPT>
__device__ __forceinline__ void front(const NvlmProjectorFront& p) {
    __shared__ float partial[2][32];
    const uint32_t r = blockIdx.x;
    if (r >= p.rows) return;  // the whole block: before any barrier
    const uint32_t half = p.grid_side / 2;
    const uint32_t t = r / (half * half);
    const uint32_t cell = r - t * half * half;
    const uint32_t i = cell / half;
    const uint32_t j = cell - i * half;
    // v2: rows 2i, 2i+1 from column 2j; v1 reads the transposed grid.
    const uint32_t grid_row = p.transpose ? 2 * j : 2 * i;
    const uint32_t grid_col = p.transpose ? 2 * i : 2 * j;
    const uint64_t c = p.channels;
    const uint64_t token = static_cast<uint64_t>(t) * p.tokens_per_tile + p.first_token +
                           static_cast<uint64_t>(grid_row) * p.grid_side + grid_col;
    const uint16_t* run0 = reinterpret_cast<const uint16_t*>(p.input) + token * c;
    const uint16_t* run1 = run0 + static_cast<uint64_t>(p.grid_side) * c;  // the next patch row
    const uint32_t two_c = 2 * p.channels;
    const uint32_t chunks = p.row_width / VEC;

    Chunk<VEC> raw[VPT];
    float sum = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const uint32_t q = threadIdx.x + v * blockDim.x;
        raw[v] = Chunk<VEC>{};
        if (q < chunks) {
            // A chunk never straddles the two runs: 2C % VEC == 0.
            const uint32_t k = q * VEC;
            raw[v] = load_readonly<VEC>(k < two_c ? run0 + k : run1 + (k - two_c));
#pragma unroll
            for (int e = 0; e < VEC; ++e) sum += to_f32<T>(element(raw[v], e));
        }
    }
    const float inv_n = 1.f / static_cast<float>(p.row_width);
    const float mean = block_sum(sum, partial[0]) * inv_n;

    float squares = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        if (threadIdx.x + v * blockDim.x < chunks) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float d = to_f32<T>(element(raw[v], e)) - mean;
                squares += d * d;
            }
        }
    }
    const float rstd = rsqrtf(block_sum(squares, partial[1]) * inv_n + p.eps);

    const uint16_t* gamma = reinterpret_cast<const uint16_t*>(p.gamma);
    const uint16_t* beta = reinterpret_cast<const uint16_t*>(p.beta);
    uint16_t* out = reinterpret_cast<uint16_t*>(p.out) + static_cast<uint64_t>(r) * p.row_width;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const uint32_t q = threadIdx.x + v * blockDim.x;
        if (q < chunks) {
            const uint32_t k = q * VEC;
            const Chunk<VEC> g = load_readonly<VEC>(gamma + k);
            const Chunk<VEC> b = load_readonly<VEC>(beta + k);
            Chunk<VEC> y{};
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float x = to_f32<T>(element(raw[v], e));
                const float n = (x - mean) * rstd * to_f32<T>(element(g, e)) + to_f32<T>(element(b, e));
                set_element(y, e, from_f32<T>(n));
            }
            store<VEC>(out + k, y);
        }
    }
}

// Grid-stride over chunks; with VEC == 8 the host guarantees cols % 8 == 0,
// so a chunk lies in one row and its bias is 8 consecutive values.
template <typename T, int VEC>
__device__ __forceinline__ void bias_gelu(const NvlmBiasGelu& p) {
    uint16_t* data = reinterpret_cast<uint16_t*>(p.data);
    const uint16_t* bias = reinterpret_cast<const uint16_t*>(p.bias);
    const uint64_t chunks = p.count / VEC;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    for (uint64_t q = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < chunks; q += stride) {
        const uint64_t k = q * VEC;
        const Chunk<VEC> x = load<VEC>(data + k);
        Chunk<VEC> b{};
        if (bias != nullptr) b = load_readonly<VEC>(bias + k % p.cols);
        Chunk<VEC> y{};
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            float v = to_f32<T>(element(x, e));
            if (bias != nullptr) v += to_f32<T>(element(b, e));
            if (p.gelu) v = nvlm::gelu_erf(v);
            set_element(y, e, from_f32<T>(v));
        }
        store<VEC>(data + k, y);
    }
}

}  // namespace

#define NVLM_FRONT(TYPE, NAME, VEC, VPT)                                                   \
    extern "C" __global__ void __launch_bounds__(NVLM_PROJECTOR_MAX_THREADS)               \
        projector_front_##NAME##VEC##x##VPT(const NvlmProjectorFront p) {                \
        front<TYPE, (VEC), (VPT)>(p);                                                      \
    }

NVLM_FRONT(Bf16, bf16_v, 8, 1)
NVLM_FRONT(Bf16, bf16_v, 8, 2)
NVLM_FRONT(Bf16, bf16_v, 8, 4)
NVLM_FRONT(Bf16, bf16_v, 8, 8)
NVLM_FRONT(Bf16, bf16_s, 1, 8)
NVLM_FRONT(F16, f16_v, 8, 1)
NVLM_FRONT(F16, f16_v, 8, 2)
NVLM_FRONT(F16, f16_v, 8, 4)
NVLM_FRONT(F16, f16_v, 8, 8)
NVLM_FRONT(F16, f16_s, 1, 8)

#define NVLM_BIAS_GELU(TYPE, NAME, VEC)                                                    \
    extern "C" __global__ void __launch_bounds__(NVLM_PROJECTOR_MAX_THREADS)               \
        bias_gelu_##NAME(const NvlmBiasGelu p) {                                           \
        bias_gelu<TYPE, (VEC)>(p);                                                         \
    }

NVLM_BIAS_GELU(Bf16, bf16_v8, 8)
NVLM_BIAS_GELU(Bf16, bf16_s1, 1)
NVLM_BIAS_GELU(F16, f16_v8, 8)
NVLM_BIAS_GELU(F16, f16_s1, 1)
