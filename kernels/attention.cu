// InternViT attention, portable path (sm_80 and newer): a flash-attention
// forward on mma.sync tensor cores, and the InternViT-6B qk-RMSNorm.
//
// Flash attention (FlashAttention-2's schedule): one block per 128 query
// rows of one (batch, head); 8 warps of 16 rows each. Each warp keeps its Q
// fragments, the running max/sum and the O accumulator in registers and
// streams 64-key K/V tiles from shared memory through two stages: cp.async
// fills the next tile's stage while this one's is used (double buffering). S = Q K^T and O += P V are
// mma.sync.m16n8k16 (bf16 or f16 operands, f32 accumulation); P goes from
// the S accumulators straight into A fragments without shared memory.
// The softmax is online, in the log2 domain: t = s * scale * log2(e),
// p = 2^(t - running max).
//
// Tails (N = 1025 = 8 * 128 + 1 for InternViT):
// - keys: the last K/V tile holds kv_len % 64 keys. Rows past kv_len are
//   zero-filled by cp.async (never read from global memory) and their scores
//   are set to -inf, so they get p = 0 (a zero score would not). Groups of
//   16 keys that lie entirely past kv_len skip their MMAs, so the 1-key
//   tail tile costs 1/4 of a tile's tensor work, not a full tile.
// - queries: the last query tile holds q_len % 128 rows. Its rows past
//   q_len are zero-filled, computed on and never stored; a warp whose 16
//   rows all lie past q_len skips every MMA. At N = 1025 the 9th tile runs
//   one warp's worth of tensor work (1 of 65 warp-tiles per head, 1.5%)
//   instead of a full 128-row tile (12.5%). Its time is another matter: at
//   D = 128 (one block per SM, see the launch bounds) that block holds its
//   SM while one warp works through every K/V tile, latency-bound; the
//   estimate is ~half a full block's time, i.e. ~5% of the call rather than
//   1.5%. At D = 64 (two blocks per SM) it shares the SM with a full block.
//   The bench's N = 1024 cases measure the real cost.
// Why 128 rows (8 warps) and not 64: each K/V tile fetched from L2 serves
// twice as many query rows (at B7 H25 N1025 the K/V re-reads are ~0.8 GB per
// call at 128 rows vs ~1.6 GB at 64), and the warp skip above removes most
// of the tensor work a tall tile would waste at the query tail.
//
// Shared memory rows are D/8 16-byte chunks; chunk c of row r is stored at
// chunk c ^ (r % 8), so the 8 row addresses of every ldmatrix (and the
// cp.async writes) fall in 8 different bank groups.
#include "abi.h"
#include "common/ptx.cuh"
#include "common/warp_mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

using namespace nvlm;

namespace {

constexpr int kThreads = NVLM_FLASH_ATTENTION_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kBlockM = kWarps * 16;  // query rows per block
constexpr int kBlockN = 64;           // keys per K/V tile
constexpr float kLn2 = 0.6931471805599453f;

// ---- element types ----

template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
    // Two f32 to one register of two elements, `lo` in the low half (the
    // lower column index in mma fragments).
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(uint16_t bits) {
        return __bfloat162float(__ushort_as_bfloat16(bits));
    }
    static __device__ __forceinline__ uint16_t from_float(float x) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    }
};

template <>
struct Elem<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(uint16_t bits) {
        return __half2float(__ushort_as_half(bits));
    }
    static __device__ __forceinline__ uint16_t from_float(float x) {
        return __half_as_ushort(__float2half_rn(x));
    }
};

// ---- shared-memory tiles ----

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of D-element rows.
template <int D>
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
    return static_cast<uint32_t>(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
}

// Copies rows [first, first + kRows) of one (batch, head) slice into the
// tile at `smem`; rows at or past `len` become zeros. `base` points at
// token 0 of the slice, `stride` is in elements.
template <int D, int kRows>
__device__ __forceinline__ void load_tile(uint32_t smem, const char* base, int64_t stride,
                                          int first, int len) {
    constexpr int kChunks = D / 8;
    static_assert((kRows * kChunks) % kThreads == 0, "tile must split evenly over the block");
#pragma unroll
    for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
        const int idx = i * kThreads + static_cast<int>(threadIdx.x);
        const int row = idx / kChunks;
        const int chunk = idx % kChunks;
        const int token = first + row;
        const bool valid = token < len;
        // A row past the end reads nothing; its address is only clamped to
        // one inside the slice.
        const char* src = base + (static_cast<int64_t>(valid ? token : 0) * stride) * 2 + chunk * 16;
        cp_async_16(smem + tile_offset<D>(row, chunk), src, valid);
    }
}

// ---- flash attention ----

template <typename T, int D>
__device__ __forceinline__ void flash_attention_forward(const NvlmFlashAttention& p) {
    static_assert(D == 64 || D == 128, "head_dim 64 or 128");
    using E = Elem<T>;
    constexpr int kTileBytes = kBlockN * D * 2;  // one K or V tile
    constexpr int kStageBytes = 2 * kTileBytes;  // K tile, then V tile
    // Q is read into registers once, so it borrows stage 1, which the
    // prefetch of K/V tile 1 overwrites only after a barrier.
    static_assert(kBlockM * D * 2 == kStageBytes, "Q tile must fit in one stage");
    const uint32_t smem_base = smem_addr(dynamic_smem());
    const uint32_t q_smem = smem_base + kStageBytes;

    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int group = lane / 4;  // mma fragment row (and row + 8)
    const int quad = lane % 4;   // mma fragment column pair
    const int q0 = static_cast<int>(blockIdx.x) * kBlockM;
    const int head = static_cast<int>(blockIdx.y);
    const int batch = static_cast<int>(blockIdx.z);

    auto slice = [&](const NvlmAttentionTensor& t) {
        return reinterpret_cast<const char*>(t.ptr) +
               (static_cast<int64_t>(batch) * t.stride_batch + static_cast<int64_t>(head) * t.stride_head) * 2;
    };
    const char* q_base = slice(p.q);
    const char* k_base = slice(p.k);
    const char* v_base = slice(p.v);
    const int kv_tiles = (p.kv_len + kBlockN - 1) / kBlockN;

    auto load_kv = [&](int tile) {
        const uint32_t stage = smem_base + (tile & 1) * kStageBytes;
        load_tile<D, kBlockN>(stage, k_base, p.k.stride_token, tile * kBlockN, p.kv_len);
        load_tile<D, kBlockN>(stage + kTileBytes, v_base, p.v.stride_token, tile * kBlockN, p.kv_len);
    };

    load_tile<D, kBlockM>(q_smem, q_base, p.q.stride_token, q0, p.q_len);
    cp_async_commit();
    load_kv(0);
    cp_async_commit();
    cp_async_wait<1>();  // Q has landed (tile 0 may still be in flight)
    __syncthreads();

    // A fragments of this warp's 16 Q rows, one set per 16 columns of d.
    // ldmatrix lanes 0-15 address rows 0-15 of the left 8 columns, lanes
    // 16-31 rows 0-15 of the right 8: registers a0..a3 of m16n8k16.
    const int warp_row0 = warp * 16;
    uint32_t q_frag[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        ldmatrix_x4(q_frag[ks], q_smem + tile_offset<D>(warp_row0 + (lane & 15), ks * 2 + (lane >> 4)));
    }
    __syncthreads();  // every warp has its Q before stage 1 is refilled

    // A warp whose rows all lie past q_len has no output: it only helps load.
    const bool warp_active = q0 + warp_row0 < p.q_len;

    float o[D / 8][4];  // O accumulator, 8 columns of d per entry
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dn][e] = 0.f;
    }
    // Per fragment row (group, group + 8): running max of t (log2 domain)
    // and this thread's part of the running sum of p.
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};

    for (int tile = 0; tile < kv_tiles; ++tile) {
        if (tile + 1 < kv_tiles) load_kv(tile + 1);
        cp_async_commit();   // possibly empty, so the wait count stays uniform
        cp_async_wait<1>();  // tile `tile` has landed (this thread's part)
        __syncthreads();     // ... and every thread's part

        if (warp_active) {
            const uint32_t k_smem = smem_base + (tile & 1) * kStageBytes;
            const uint32_t v_smem = k_smem + kTileBytes;
            const int kv_valid = min(kBlockN, p.kv_len - tile * kBlockN);  // >= 1

            // S = Q K^T: 8 column blocks of 8 keys. One ldmatrix.x4 gives B
            // fragments for 16 keys x 16 d: lanes 0-7 keys 0-7 / d 0-7 (b0 of
            // block 2np), 8-15 keys 0-7 / d 8-15 (b1), 16-23 keys 8-15 / d 0-7
            // (b0 of block 2np+1), 24-31 keys 8-15 / d 8-15 (b1).
            float s[kBlockN / 8][4];
#pragma unroll
            for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nb][e] = 0.f;
            }
#pragma unroll
            for (int np = 0; np < kBlockN / 16; ++np) {
                if (np * 16 < kv_valid) {
#pragma unroll
                    for (int ks = 0; ks < D / 16; ++ks) {
                        uint32_t kf[4];
                        ldmatrix_x4(kf, k_smem + tile_offset<D>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                                                ks * 2 + ((lane >> 3) & 1)));
                        mma_m16n8k16<T>(s[2 * np], q_frag[ks], kf[0], kf[1]);
                        mma_m16n8k16<T>(s[2 * np + 1], q_frag[ks], kf[2], kf[3]);
                    }
                }
            }

            // Scale into the log2 domain; keys past kv_len get -inf. Element
            // e of block nb is row group + 8*(e/2), key nb*8 + 2*quad + e%2.
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = nb * 8 + 2 * quad + (e & 1);
                    const float t = key < kv_valid ? s[nb][e] * p.scale_log2 : -INFINITY;
                    s[nb][e] = t;
                    tile_max[e >> 1] = fmaxf(tile_max[e >> 1], t);
                }
            }
            // The 4 lanes of a quad hold all 64 keys of a row between them.
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
                // Finite: every tile has a valid key. On the first tile the
                // old max is -inf, so alpha = 2^-inf = 0.
                const float new_max = fmaxf(row_max[r], tile_max[r]);
                alpha[r] = fast_exp2(row_max[r] - new_max);
                row_max[r] = new_max;
                row_sum[r] *= alpha[r];
            }
#pragma unroll
            for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float pe = fast_exp2(s[nb][e] - row_max[e >> 1]);
                    s[nb][e] = pe;
                    row_sum[e >> 1] += pe;
                }
            }
#pragma unroll
            for (int dn = 0; dn < D / 8; ++dn) {
#pragma unroll
                for (int e = 0; e < 4; ++e) o[dn][e] *= alpha[e >> 1];
            }

            // O += P V over 4 steps of 16 keys. The S accumulators of blocks
            // 2kk and 2kk+1 are exactly the A fragment of keys 16kk..16kk+15.
            // ldmatrix.trans gives B fragments of V (keys x d): lanes 0-7
            // keys 0-7 / d 0-7 (b0 of d block 2dp), 8-15 keys 8-15 / d 0-7
            // (b1), 16-23 keys 0-7 / d 8-15 (b0 of 2dp+1), 24-31 keys 8-15 /
            // d 8-15 (b1).
#pragma unroll
            for (int kk = 0; kk < kBlockN / 16; ++kk) {
                if (kk * 16 < kv_valid) {
                    const uint32_t pa[4] = {
                        E::pack(s[2 * kk][0], s[2 * kk][1]),
                        E::pack(s[2 * kk][2], s[2 * kk][3]),
                        E::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        E::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]),
                    };
#pragma unroll
                    for (int dp = 0; dp < D / 16; ++dp) {
                        uint32_t vf[4];
                        ldmatrix_x4_trans(vf, v_smem + tile_offset<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                                      dp * 2 + (lane >> 4)));
                        mma_m16n8k16<T>(o[2 * dp], pa, vf[0], vf[1]);
                        mma_m16n8k16<T>(o[2 * dp + 1], pa, vf[2], vf[3]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    if (!warp_active) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    }
    char* o_base = reinterpret_cast<char*>(p.o.ptr) +
                   (static_cast<int64_t>(batch) * p.o.stride_batch + static_cast<int64_t>(head) * p.o.stride_head) * 2;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = q0 + warp_row0 + group + 8 * r;
        if (row >= p.q_len) continue;
        // row_sum >= 1: the row's max contributes 2^0.
        const float inv = 1.f / row_sum[r];
        uint32_t* dst = reinterpret_cast<uint32_t*>(o_base + static_cast<int64_t>(row) * p.o.stride_token * 2);
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
            dst[(dn * 8 + 2 * quad) / 2] = E::pack(o[dn][2 * r] * inv, o[dn][2 * r + 1] * inv);
        }
        if (p.lse != 0 && quad == 0) {
            float* lse = reinterpret_cast<float*>(p.lse);
            lse[(static_cast<int64_t>(batch) * p.heads + head) * p.q_len + row] =
                (row_max[r] + log2f(row_sum[r])) * kLn2;
        }
    }
}

// ---- qk-RMSNorm ----

constexpr int kNormThreads = NVLM_QK_RMS_NORM_THREADS;

// Sum over the block; every thread gets the result.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kNormThreads / 32; ++w) total += scratch[w];
    return total;
}

// HF InternRMSNorm, per token and for q and k separately:
//   x = hidden.to(f32); var = mean(x^2); y = (x * rsqrt(var + eps)).to(dtype);
//   out = weight * y   (dtype x dtype, rounded once to dtype)
// rsqrt is computed as 1 / sqrtf (both correctly rounded), as torch's CPU
// path does; dummy heads (past `width`) are not touched.
template <typename T>
__device__ __forceinline__ void qk_rms_norm(const NvlmQkRmsNorm& p) {
    using E = Elem<T>;
    __shared__ float scratch[2][kNormThreads / 32];
    uint16_t* row = reinterpret_cast<uint16_t*>(p.qkv) + static_cast<int64_t>(blockIdx.x) * p.token_stride;
    const int chunks = static_cast<int>(p.width / 8);
    const uint16_t* weights[2] = {reinterpret_cast<const uint16_t*>(p.q_weight),
                                  reinterpret_cast<const uint16_t*>(p.k_weight)};
#pragma unroll
    for (int part = 0; part < 2; ++part) {
        uint16_t* x = row + part * p.part_stride;
        float sum = 0.f;
        for (int c = static_cast<int>(threadIdx.x); c < chunks; c += kNormThreads) {
            const uint4 v = reinterpret_cast<const uint4*>(x)[c];
            const uint16_t* e = reinterpret_cast<const uint16_t*>(&v);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float f = E::to_float(e[i]);
                sum = fmaf(f, f, sum);
            }
        }
        const float var = block_sum(sum, scratch[part]) / static_cast<float>(p.width);
        const float inv_rms = 1.f / sqrtf(var + p.eps);
        for (int c = static_cast<int>(threadIdx.x); c < chunks; c += kNormThreads) {
            uint4 v = reinterpret_cast<const uint4*>(x)[c];
            const uint4 w = reinterpret_cast<const uint4*>(weights[part])[c];
            uint16_t* e = reinterpret_cast<uint16_t*>(&v);
            const uint16_t* we = reinterpret_cast<const uint16_t*>(&w);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float y = E::to_float(E::from_float(E::to_float(e[i]) * inv_rms));
                e[i] = E::from_float(E::to_float(we[i]) * y);
            }
            reinterpret_cast<uint4*>(x)[c] = v;
        }
    }
}

}  // namespace

#define NVLM_FLASH_KERNEL(name, T, D, MIN_BLOCKS)                                          \
    extern "C" __global__ void __launch_bounds__(kThreads, MIN_BLOCKS)                     \
        name(const NvlmFlashAttention p) {                                                 \
        flash_attention_forward<T, D>(p);                                                  \
    }

// D = 128 holds 64 registers of O, 32 of Q and 32 of S per thread, and
// ptxas gives it 243-245 in all, so one 8-warp block per SM; D = 64 (128
// registers) fits two.
NVLM_FLASH_KERNEL(flash_attention_bf16_d64, __nv_bfloat16, 64, 2)
NVLM_FLASH_KERNEL(flash_attention_bf16_d128, __nv_bfloat16, 128, 1)
NVLM_FLASH_KERNEL(flash_attention_f16_d64, __half, 64, 2)
NVLM_FLASH_KERNEL(flash_attention_f16_d128, __half, 128, 1)

extern "C" __global__ void __launch_bounds__(kNormThreads) qk_rms_norm_bf16(const NvlmQkRmsNorm p) {
    qk_rms_norm<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(kNormThreads) qk_rms_norm_f16(const NvlmQkRmsNorm p) {
    qk_rms_norm<__half>(p);
}
