// Self-tests of the Hopper primitives in kernels/common/ (TMA, mbarrier,
// wgmma, clusters), each a small kernel whose result the host checks exactly against
// the CPU (tests/gpu_hopper_primitives.rs). They exist so that a failure in
// a primitive shows up here, alone, rather than as a wrong attention output.
// Built for every target; on anything below sm_90a they trap.
#include "abi.h"
#include "common/cluster.cuh"
#include "common/mbarrier.cuh"
#include "common/tma.cuh"
#include "common/wgmma.cuh"
#include <cuda_bf16.h>

using namespace nvlm;

// Every self-test is sm_90a code (the feature macro is also the one the
// host emulation defines).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The one barrier a self-test's loads complete on, ready for every thread.
__device__ __forceinline__ void init_load_barrier(uint64_t* loaded) {
    if (threadIdx.x == 0) {
        mbarrier_init(loaded, 1);
        mbarrier_init_fence();
    }
    __syncthreads();
}
#endif

// Dynamic shared memory rounded up to a 1024-byte boundary, as swizzled
// tiles need (and more than TMA's and wgmma's 128 or 16 bytes otherwise);
// every self-test's launch asks for 1024 bytes of slack. Dynamic rather
// than static shared memory so that the host emulation, which maps only
// the dynamic window, runs these kernels too.
__device__ __forceinline__ uint16_t* aligned_smem() {
    uint8_t* smem = dynamic_smem();
    const uint32_t misalign = smem_addr(smem) % 1024;
    return reinterpret_cast<uint16_t*>(smem + (misalign ? 1024 - misalign : 0));
}

// Writes a 64xN f32 accumulator tile (wgmma's layout, wgmma.cuh) to the
// row-major matrix c.
template <int N>
__device__ __forceinline__ void store_accumulators(const float (&acc)[N / 2], float* c) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = 16 * warp + lane / 4;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
        const int col = 8 * j + 2 * (lane % 4);
        c[row * N + col] = acc[4 * j];
        c[row * N + col + 1] = acc[4 * j + 1];
        c[(row + 8) * N + col] = acc[4 * j + 2];
        c[(row + 8) * N + col + 1] = acc[4 * j + 3];
    }
}

// Two CTAs of a cluster: each loads one box and multicasts it into both
// (abi.h), and greets the other through an arrival on its barrier. Every
// barrier lives in dynamic shared memory, at the same offset in both CTAs,
// as multicast and remote arrivals address them (and as the host
// emulation, which runs the two CTAs together, needs).
extern "C" __global__ void NVLM_CLUSTER_DIMS(2, 1, 1) __launch_bounds__(128)
    selftest_cluster_multicast(const __grid_constant__ CUtensorMap src_map,
                               NvlmClusterSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* tile = aligned_smem();
    const uint32_t box_elems = p.box_width * p.box_height;
    uint64_t* loaded = reinterpret_cast<uint64_t*>(tile + 2 * box_elems);
    uint64_t* greeted = loaded + 1;
    const uint32_t rank = cluster_ctarank();
    if (threadIdx.x == 0) {
        mbarrier_init(loaded, 1);
        mbarrier_init(greeted, 1);
        mbarrier_init_fence();
    }
    // Both CTAs' barriers exist before either CTA's loads or arrivals.
    cluster_sync();
    if (threadIdx.x == 0) {
        // Both boxes: this CTA's and the other's.
        mbarrier_arrive_expect_tx(loaded, 2 * box_elems * 2);
        tma_load_2d_multicast(tile + rank * box_elems, &src_map, loaded, p.x,
                              p.y + static_cast<int32_t>(rank * p.box_height), 0b11);
    }
    if (threadIdx.x < 32) mbarrier_arrive_cluster(greeted, rank ^ 1, threadIdx.x == 0);
    mbarrier_wait(loaded, 0);
    mbarrier_wait(greeted, 0);
    uint16_t* out = reinterpret_cast<uint16_t*>(p.out) + rank * 2 * box_elems;
    for (uint32_t i = threadIdx.x; i < 2 * box_elems; i += blockDim.x) out[i] = tile[i];
    // Neither CTA leaves while the other may still write into it.
    cluster_sync();
#else
    __trap();
#endif
}

// One TMA load of a bf16 box (partly outside the tensor when the caller
// asks for it: TMA must fill those elements with zeros), copied out with
// plain stores, then the same shared-memory box written back by a TMA store
// (which must clip at the tensor's edges).
extern "C" __global__ void __launch_bounds__(128)
    selftest_tma_round_trip(const __grid_constant__ CUtensorMap src_map,
                            const __grid_constant__ CUtensorMap dst_map, NvlmTmaSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* box = aligned_smem();
    __shared__ __align__(8) uint64_t loaded;
    init_load_barrier(&loaded);
    const uint32_t elems = p.box_width * p.box_height;
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&loaded, elems * 2);
        tma_load_2d(box, &src_map, &loaded, p.load_x, p.load_y);
    }
    mbarrier_wait(&loaded, 0);
    uint16_t* box_out = reinterpret_cast<uint16_t*>(p.box_out);
    for (uint32_t i = threadIdx.x; i < elems; i += blockDim.x) box_out[i] = box[i];
    __syncthreads();
    if (threadIdx.x == 0) {
        tma_store_2d(&dst_map, box, p.store_x, p.store_y);
        tma_store_commit();
        tma_store_wait_all();
    }
#else
    __trap();
#endif
}

// A producer warp streams 32-row tiles of a [rows, 64] bf16 matrix through
// a 2-stage ring (TMA completing on "full" barriers); a consumer warpgroup
// reduces each column and frees the stage on its "empty" barrier. Many more
// tiles than stages, so every barrier goes through many phases.
// out[c] = sum of column c, out[64 + c] = sum of squares (fmaf), each
// accumulated in row order so the host can reproduce them bit for bit.
[[maybe_unused]] constexpr int kPipeStages = 2;
[[maybe_unused]] constexpr int kPipeCols = 64;
[[maybe_unused]] constexpr int kPipeTileRows = 32;
[[maybe_unused]] constexpr int kPipeTileElems = kPipeTileRows * kPipeCols;
constexpr int kPipeConsumers = 128;

extern "C" __global__ void __launch_bounds__(kPipeConsumers + 32)
    selftest_mbarrier_pipeline(const __grid_constant__ CUtensorMap map, NvlmPipelineSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* tiles = aligned_smem();  // kPipeStages tiles of kPipeTileElems
    __shared__ __align__(8) uint64_t full[kPipeStages];
    __shared__ __align__(8) uint64_t empty[kPipeStages];
    if (threadIdx.x == 0) {
        for (int s = 0; s < kPipeStages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], kPipeConsumers);
        }
        mbarrier_init_fence();
    }
    __syncthreads();
    const uint32_t tile_count = (p.rows + kPipeTileRows - 1) / kPipeTileRows;
    if (threadIdx.x >= kPipeConsumers) {
        if (threadIdx.x == kPipeConsumers) {
            for (uint32_t i = 0; i < tile_count; ++i) {
                const uint32_t stage = i % kPipeStages, round = i / kPipeStages;
                // A fresh barrier counts as having completed the phase
                // before phase 0, so round 0 does not wait.
                mbarrier_wait(&empty[stage], (round & 1) ^ 1);
                mbarrier_arrive_expect_tx(&full[stage], kPipeTileRows * kPipeCols * 2);
                tma_load_2d(tiles + stage * kPipeTileElems, &map, &full[stage], 0,
                            static_cast<int32_t>(i * kPipeTileRows));
            }
        }
        return;
    }
    const uint32_t col = threadIdx.x % kPipeCols;
    const bool squares = threadIdx.x >= kPipeCols;
    float acc = 0.0f;
    for (uint32_t i = 0; i < tile_count; ++i) {
        const uint32_t stage = i % kPipeStages, round = i / kPipeStages;
        mbarrier_wait(&full[stage], round & 1);
        for (int r = 0; r < kPipeTileRows; ++r) {
            const float v = __bfloat162float(
                __ushort_as_bfloat16(tiles[stage * kPipeTileElems + r * kPipeCols + col]));
            acc = squares ? fmaf(v, v, acc) : acc + v;
        }
        mbarrier_arrive(&empty[stage]);
    }
    reinterpret_cast<float*>(p.out)[threadIdx.x] = acc;
#else
    __trap();
#endif
}

// One warpgroup computes C[64x64] = A[64x64] * B[64x64]^T (bf16 in, f32
// out, row-major, K contiguous) with four m64n64k16 wgmma steps from
// unswizzled shared memory. The accumulators start as NaN: the first step
// overwrites them (scale-d = 0), which the result checks.
[[maybe_unused]] constexpr int kTileM = 64;
[[maybe_unused]] constexpr int kTileK = 64;

// Element offset of (row, k) in the core-matrix layout: 8x8 blocks of 128
// contiguous bytes, K-adjacent blocks 128 B apart, row-adjacent 1024 B.
__device__ __forceinline__ int core_matrix_offset(int row, int k) {
    return ((row / 8) * (kTileK / 8) + k / 8) * 64 + (row % 8) * 8 + k % 8;
}

extern "C" __global__ void __launch_bounds__(128) selftest_wgmma_tile(NvlmWgmmaSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* a_tile = aligned_smem();
    uint16_t* b_tile = a_tile + kTileM * kTileK;
    const uint16_t* a = reinterpret_cast<const uint16_t*>(p.a);
    const uint16_t* b = reinterpret_cast<const uint16_t*>(p.b);
    for (int i = threadIdx.x; i < kTileM * kTileK; i += blockDim.x) {
        const int at = core_matrix_offset(i / kTileK, i % kTileK);
        a_tile[at] = a[i];
        b_tile[at] = b[i];
    }
    fence_proxy_async_shared();
    __syncthreads();

    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = __int_as_float(0x7fc00000);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kTileK / 16; ++step) {
        // A k16 step spans two K-adjacent core matrices: 128 elements on.
        const uint64_t da = wgmma_descriptor(a_tile + step * 128, 128, (kTileK / 8) * 128,
                                             WgmmaSwizzle::None);
        const uint64_t db = wgmma_descriptor(b_tile + step * 128, 128, (kTileK / 8) * 128,
                                             WgmmaSwizzle::None);
        wgmma_ss<64, __nv_bfloat16>(acc, da, db, step > 0);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>();
    wgmma_fence_operands(acc);

    store_accumulators<64>(acc, reinterpret_cast<float*>(p.c));
#else
    __trap();
#endif
}

// The two wgmma forms attention needs, on operands TMA loaded with the
// 128-byte swizzle (64-element atoms, tiles 1024-byte aligned):
// - selftest_wgmma_swizzled: C[64x64] = A[64x128] * B[64x128]^T, both
//   K-major (Q K^T with head_dim 128): 8 k16 steps, two atoms along K.
// - selftest_wgmma_rs: C[64x128] = P[64x64] * V[64x128], P from registers
//   (as attention's probabilities are), V MN-major (head_dim contiguous):
//   4 k16 steps, two atoms along N.
[[maybe_unused]] constexpr uint32_t kAtomBytes = 64 * 64 * 2;  // 64 rows of 128 bytes

// One 4-D TMA load with the 128-byte swizzle: a box of 64 d-columns by 128
// token rows of one (head, batch), as the attention kernel loads Q, K and V
// tiles. Its shared-memory bytes are copied out as they landed, so the host
// checks the map's dimension order, strides, zero fill and swizzle with no
// wgmma in between.
[[maybe_unused]] constexpr uint32_t kBox4dBytes = 128 * 128;

extern "C" __global__ void __launch_bounds__(128)
    selftest_tma_4d(const __grid_constant__ CUtensorMap map, NvlmTma4dSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* box = aligned_smem();
    __shared__ __align__(8) uint64_t loaded;
    init_load_barrier(&loaded);
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&loaded, kBox4dBytes);
        tma_load_4d(box, &map, &loaded, p.coords[0], p.coords[1], p.coords[2], p.coords[3]);
    }
    mbarrier_wait(&loaded, 0);
    const uint4* from = reinterpret_cast<const uint4*>(box);
    uint4* to = reinterpret_cast<uint4*>(p.out);
    for (uint32_t i = threadIdx.x; i < kBox4dBytes / 16; i += blockDim.x) to[i] = from[i];
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128)
    selftest_wgmma_swizzled(const __grid_constant__ CUtensorMap a_map,
                            const __grid_constant__ CUtensorMap b_map, NvlmWgmmaSwizzledSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* atoms = aligned_smem();  // a0 a1 b0 b1, 8 KB each
    __shared__ __align__(8) uint64_t loaded;
    init_load_barrier(&loaded);
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&loaded, 4 * kAtomBytes);
        for (int atom = 0; atom < 2; ++atom) {
            tma_load_2d(atoms + atom * 4096, &a_map, &loaded, 64 * atom, 0);
            tma_load_2d(atoms + (2 + atom) * 4096, &b_map, &loaded, 64 * atom, 0);
        }
    }
    mbarrier_wait(&loaded, 0);

    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = __int_as_float(0x7fc00000);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < 8; ++step) {
        // Within an atom a k16 step is 32 bytes (16 elements) further along
        // the (swizzled) 128-byte rows.
        const int offset = (step / 4) * 4096 + (step % 4) * 16;
        const uint64_t da = wgmma_descriptor(atoms + offset, 16, 1024, WgmmaSwizzle::B128);
        const uint64_t db =
            wgmma_descriptor(atoms + 2 * 4096 + offset, 16, 1024, WgmmaSwizzle::B128);
        wgmma_ss<64, __nv_bfloat16>(acc, da, db, step > 0);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>();
    wgmma_fence_operands(acc);

    store_accumulators<64>(acc, reinterpret_cast<float*>(p.c));
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128)
    selftest_wgmma_rs(const __grid_constant__ CUtensorMap v_map, NvlmWgmmaRsSelftest p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    uint16_t* v_atoms = aligned_smem();  // head_dim 0..63, 64..127
    __shared__ __align__(8) uint64_t loaded;
    init_load_barrier(&loaded);
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&loaded, 2 * kAtomBytes);
        tma_load_2d(v_atoms, &v_map, &loaded, 0, 0);
        tma_load_2d(v_atoms + 4096, &v_map, &loaded, 64, 0);
    }

    // P's A fragments, straight from global memory (bf16 pairs).
    const uint32_t* p_pairs = reinterpret_cast<const uint32_t*>(p.p);  // [64][32] pairs
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = 16 * warp + lane / 4, pair = lane % 4;
    uint32_t a[4][4];
#pragma unroll
    for (int step = 0; step < 4; ++step) {
        a[step][0] = p_pairs[row * 32 + step * 8 + pair];
        a[step][1] = p_pairs[(row + 8) * 32 + step * 8 + pair];
        a[step][2] = p_pairs[row * 32 + step * 8 + 4 + pair];
        a[step][3] = p_pairs[(row + 8) * 32 + step * 8 + 4 + pair];
    }
    mbarrier_wait(&loaded, 0);

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = __int_as_float(0x7fc00000);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < 4; ++step) {
        // A k16 step is 16 V rows (two 8-row groups of 1024 bytes) further.
        const uint64_t dv =
            wgmma_descriptor(v_atoms + step * 16 * 64, kAtomBytes, 1024, WgmmaSwizzle::B128);
        wgmma_rs<128, __nv_bfloat16>(acc, a[step], dv, step > 0);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>();
    wgmma_fence_operands(acc);

    store_accumulators<128>(acc, reinterpret_cast<float*>(p.c));
#else
    __trap();
#endif
}
