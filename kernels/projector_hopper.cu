// The projector's Linears on sm_90a: y = act(x · w^T + bias) in one
// kernel, act being the exact erf GELU (Linear 1) or nothing (Linear 2),
// so that Linear 1's output is written once, already activated, instead
// of by a cuBLASLt GEMM and then rewritten by kernels/projector.cu's GELU
// pass.
//
// One CTA = a 128 x BN tile of y, BN = 256 or 224 (the host picks the
// width that fills the GPU's waves better: NVLM-D-72B's 29568 = 132 x 224).
// Two CTAs adjacent along m form a cluster and share each weight tile, so
// that each reads 32 KiB a k step from L2 instead of 48 (BN = 256; PERF.md:
// without the pair the kernel would be bound by L2 bandwidth):
// - warpgroup 0, the producer: one thread streams k steps of 64 through a
//   4-stage ring with TMA: its CTA's own 128 x 64 tile of x, and one half
//   (BN / 2 rows) of the BN x 64 tile of w, multicast to both CTAs of the
//   pair (the other CTA loads the other half);
// - warpgroups 1 and 2, the consumers: 64 rows each, m64nBNk16 wgmmas
//   from shared memory into BN / 2 f32 accumulators a thread. One k step's
//   group stays in flight while the next is issued; a stage is released
//   once its group is done, to both CTAs' producers, as each writes into
//   both CTAs' stages;
// - the epilogue: + bias, GELU, rounded once to the output dtype, stored
//   from registers in pairs of columns; rows past m and columns past n are
//   not stored.
//
// Tails: TMA fills rows past m and n and columns past k with zeros, so the
// main loop needs no masking. The grid rounds m up to whole pairs: a CTA
// wholly past m still loads and multicasts its half of w, and stores
// nothing.
//
// Shared memory, dynamic only (the host emulation runs a cluster's CTAs
// at once, and there __shared__ variables are one per process): per stage
// a 16 KiB x tile and a BN x 128-byte w tile (rows of 128 bytes, 128-byte
// swizzle, 1024-byte aligned: what TMA writes and the wgmma descriptors
// read), then the stages' full and empty barriers.
#include "abi.h"
#include "common/cluster.cuh"
#include "common/convert.cuh"
#include "common/gelu.cuh"
#include "common/mbarrier.cuh"
#include "common/tma.cuh"
#include "common/wgmma.cuh"

using namespace nvlm;

namespace {

constexpr int kBlockM = NVLM_HOPPER_LINEAR_BLOCK_M;
constexpr int kBlockK = NVLM_HOPPER_LINEAR_BLOCK_K;
constexpr int kStages = NVLM_HOPPER_LINEAR_STAGES;
constexpr uint32_t kCluster = NVLM_HOPPER_LINEAR_CLUSTER_M;
constexpr int kThreads = NVLM_HOPPER_LINEAR_THREADS;
constexpr uint32_t kRowBytes = 128;
constexpr uint32_t kXTileBytes = kBlockM * kRowBytes;
static_assert(kBlockK * 2 == kRowBytes, "a k step is one 128-byte swizzle row of 16-bit elements");
static_assert(kBlockM == 128 && kThreads == 3 * 128, "two consumer warpgroups of 64 rows + a producer");

// The shared-memory layout of a tile width.
template <int BlockN>
struct Tiling {
    static constexpr uint32_t kWTileBytes = BlockN * kRowBytes;
    // The rows of a w tile each CTA of a pair loads: whole 8-row swizzle
    // atoms, so that each part starts 1024-byte aligned.
    static constexpr int kWPartRows = BlockN / kCluster;
    static constexpr uint32_t kStageBytes = kXTileBytes + kWTileBytes;
    static constexpr uint32_t kBarrierOffset = kStages * kStageBytes;
    static constexpr uint32_t kSmemBytes = kBarrierOffset + 2 * kStages * 8 + 1024;
    static_assert(kWPartRows * kCluster == BlockN && kWPartRows % 8 == 0 && kCluster <= 16,
                  "w tiles split evenly over the pair, in whole swizzle atoms");
    static_assert(kStageBytes % 1024 == 0, "every stage's tiles 1024-byte aligned");
};
static_assert(Tiling<NVLM_HOPPER_LINEAR_BLOCK_N_WIDE>::kSmemBytes == NVLM_HOPPER_LINEAR_SMEM_BYTES_WIDE,
              "abi.h");
static_assert(Tiling<NVLM_HOPPER_LINEAR_BLOCK_N_NARROW>::kSmemBytes ==
                  NVLM_HOPPER_LINEAR_SMEM_BYTES_NARROW,
              "abi.h");
static_assert(NVLM_HOPPER_LINEAR_PRODUCER_REGISTERS * 128 +
                      2 * 128 * NVLM_HOPPER_LINEAR_CONSUMER_REGISTERS <=
                  64 * 1024,
              "setmaxnreg targets beyond the register file");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// A stage is free again once every consumer warp of every CTA of the pair
// has arrived on it.
constexpr uint32_t kReleaseArrivals = kCluster * 2 * 4;

template <typename T, int BlockN>
__device__ __forceinline__ void linear_forward(const CUtensorMap* x_map, const CUtensorMap* w_map,
                                               const NvlmHopperLinear& p) {
    using L = Tiling<BlockN>;
    constexpr int kBlockN = BlockN;
    uint8_t* smem_raw = dynamic_smem();
    // The same offset in every CTA (the same kernel, the same static
    // layout), as multicast needs.
    const uint32_t misalign = smem_addr(smem_raw) % 1024;
    uint8_t* smem = smem_raw + (misalign ? 1024 - misalign : 0);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarrierOffset);
    uint64_t* empty = full + kStages;
    const auto x_tile = [&](int stage) { return smem + stage * L::kStageBytes; };
    const auto w_tile = [&](int stage) { return smem + stage * L::kStageBytes + kXTileBytes; };

    const int m = static_cast<int>(p.m), n = static_cast<int>(p.n);
    const int m0 = static_cast<int>(blockIdx.x) * kBlockM;
    const int n0 = static_cast<int>(blockIdx.y) * kBlockN;
    // In unsigned arithmetic: k + 63 overflows an int for k near INT_MAX.
    const int k_steps = static_cast<int>((p.k + kBlockK - 1) / kBlockK);
    const uint32_t rank = cluster_ctarank();
    const int warpgroup = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], kReleaseArrivals);
        }
        mbarrier_init_fence();
    }
    // The peer multicasts into this CTA and arrives on its barriers: both
    // CTAs' barriers are initialised before either starts.
    cluster_sync();

    if (warpgroup == 0) {
        warpgroup_registers_release<NVLM_HOPPER_LINEAR_PRODUCER_REGISTERS>();
        if (threadIdx.x == 0) {
            for (int step = 0; step < k_steps; ++step) {
                const int s = step % kStages, round = step / kStages;
                // Both CTAs' consumers are done with the stage's last round:
                // these loads write into both.
                mbarrier_wait(&empty[s], (round & 1) ^ 1);
                // The x tile, and both halves of the w tile (this CTA's
                // multicast and the peer's).
                mbarrier_arrive_expect_tx(&full[s], L::kStageBytes);
                tma_load_2d(x_tile(s), x_map, &full[s], step * kBlockK, m0);
                tma_load_2d_multicast(w_tile(s) + rank * L::kWPartRows * kRowBytes, w_map, &full[s],
                                      step * kBlockK, n0 + static_cast<int>(rank) * L::kWPartRows,
                                      static_cast<uint16_t>((1u << kCluster) - 1));
            }
        }
    } else {
        warpgroup_registers_claim<NVLM_HOPPER_LINEAR_CONSUMER_REGISTERS>();
        const int consumer = warpgroup - 1;
        const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
        float acc[kBlockN / 2];
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) acc[i] = 0.0f;
        // One arrival per warp on each CTA of the pair: lane c signals CTA c.
        const auto release = [&](int stage) {
            mbarrier_arrive_cluster(&empty[stage], lane % kCluster, lane < static_cast<int>(kCluster));
        };
        for (int step = 0; step < k_steps; ++step) {
            const int s = step % kStages;
            mbarrier_wait(&full[s], (step / kStages) & 1);
            const uint8_t* x_rows = x_tile(s) + consumer * 64 * kRowBytes;
            wgmma_fence();
            // k16 step t: 32 bytes along the 128-byte rows.
#pragma unroll
            for (int t = 0; t < kBlockK / 16; ++t) {
                wgmma_ss<kBlockN, T>(
                    acc, wgmma_descriptor(x_rows + t * 32, 16, 1024, WgmmaSwizzle::B128),
                    wgmma_descriptor(w_tile(s) + t * 32, 16, 1024, WgmmaSwizzle::B128), true);
            }
            wgmma_commit_group();
            // The previous step's group is done: its stage may be refilled.
            wgmma_wait_group<1>();
            wgmma_fence_operands(acc);
            if (step > 0) release((step - 1) % kStages);
        }
        wgmma_wait_group<0>();
        wgmma_fence_operands(acc);

        // acc[4j + 2h + e] = y[row0 + 8h][n0 + 8j + 2 quad + e] (common/wgmma.cuh).
        T* y = reinterpret_cast<T*>(p.y);
        const T* bias = reinterpret_cast<const T*>(p.bias);
        const int row0 = m0 + consumer * 64 + 16 * warp + lane / 4;
        const int quad = lane % 4;
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) {
            // n is even, so a pair starting inside the row ends inside it.
            const int col = n0 + 8 * j + 2 * quad;
            if (col >= n) continue;
            const float b0 = bias != nullptr ? to_f32(bias[col]) : 0.0f;
            const float b1 = bias != nullptr ? to_f32(bias[col + 1]) : 0.0f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = row0 + 8 * h;
                if (row >= m) continue;
                float v0 = acc[4 * j + 2 * h] + b0, v1 = acc[4 * j + 2 * h + 1] + b1;
                if (p.gelu) {
                    v0 = gelu_erf(v0);
                    v1 = gelu_erf(v1);
                }
                *reinterpret_cast<uint32_t*>(y + static_cast<int64_t>(row) * n + col) =
                    pack2<T>(v0, v1);
            }
        }
    }
    // Neither CTA leaves while the other may still arrive on its barriers.
    cluster_sync();
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NVLM_LINEAR_BODY(T, BlockN) linear_forward<T, BlockN>(&x_map, &w_map, p);
#else
#define NVLM_LINEAR_BODY(T, BlockN) __trap();
#endif

#define NVLM_LINEAR_ENTRY(name, T, BlockN)                                                \
    extern "C" __global__ void NVLM_CLUSTER_DIMS(NVLM_HOPPER_LINEAR_CLUSTER_M, 1, 1)      \
        __launch_bounds__(kThreads, 1)                                                    \
            name(const __grid_constant__ CUtensorMap x_map,                               \
                 const __grid_constant__ CUtensorMap w_map, NvlmHopperLinear p) {         \
        NVLM_LINEAR_BODY(T, BlockN)                                                       \
    }

NVLM_LINEAR_ENTRY(linear_hopper_n256_bf16, __nv_bfloat16, NVLM_HOPPER_LINEAR_BLOCK_N_WIDE)
NVLM_LINEAR_ENTRY(linear_hopper_n256_f16, __half, NVLM_HOPPER_LINEAR_BLOCK_N_WIDE)
NVLM_LINEAR_ENTRY(linear_hopper_n224_bf16, __nv_bfloat16, NVLM_HOPPER_LINEAR_BLOCK_N_NARROW)
NVLM_LINEAR_ENTRY(linear_hopper_n224_f16, __half, NVLM_HOPPER_LINEAR_BLOCK_N_NARROW)
