// wgmma (sm_90a): warpgroup matrix multiply-accumulate with both operands
// in shared memory, described by 64-bit matrix descriptors.
//
// Accumulator layout of m64nNk16 with f32 accumulators, per thread t of the
// warpgroup (warp w = t / 32, lane l = t % 32), for n8 block j:
//   acc[4j + 0] = C[16w + l/4    ][8j + 2(l%4)    ]
//   acc[4j + 1] = C[16w + l/4    ][8j + 2(l%4) + 1]
//   acc[4j + 2] = C[16w + l/4 + 8][8j + 2(l%4)    ]
//   acc[4j + 3] = C[16w + l/4 + 8][8j + 2(l%4) + 1]
#pragma once
#include "common/ptx.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace nvlm {

// Shared-memory layouts wgmma understands; the value is the descriptor's
// bits 62-63.
enum class WgmmaSwizzle : uint64_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

// A K-major operand: rows of M (or N) with K contiguous. Without swizzle
// the tile is made of 8x8 core matrices (8 rows of 16 bytes, stored as 128
// contiguous bytes); `k_step_bytes` (the descriptor's leading byte offset)
// is the distance between core matrices adjacent along K and `row_step_bytes`
// (the stride byte offset) between core matrices adjacent along M/N.
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* tile, uint32_t k_step_bytes,
                                                     uint32_t row_step_bytes,
                                                     WgmmaSwizzle swizzle) {
    const uint64_t start = (smem_addr(tile) & 0x3FFFF) >> 4;
    return start | (uint64_t((k_step_bytes >> 4) & 0x3FFF) << 16) |
           (uint64_t((row_step_bytes >> 4) & 0x3FFF) << 32) |
           (static_cast<uint64_t>(swizzle) << 62);
}

// Orders earlier register accesses to the accumulators before the wgmma
// that follows (needed before the first wgmma and after any other code has
// touched the accumulator registers).
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit_group() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

// Waits until at most `Pending` committed wgmma groups are still running.
template <int Pending>
__device__ __forceinline__ void wgmma_wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
}

// Keeps the compiler from moving accesses to `acc` across the asm around
// it: wgmma writes the registers asynchronously, behind its back.
template <int N>
__device__ __forceinline__ void wgmma_fence_operands(float (&acc)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

// acc (64x64 f32 tile, 32 registers per thread) += A(64x16) * B(64x16)^T,
// bf16 operands, both K-major in shared memory. `accumulate` = false
// overwrites acc instead.
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&acc)[32], uint64_t desc_a,
                                                     uint64_t desc_b, bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred keep;\n"
        "setp.ne.b32 keep, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, keep, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3]), "+f"(acc[4]), "+f"(acc[5]),
          "+f"(acc[6]), "+f"(acc[7]), "+f"(acc[8]), "+f"(acc[9]), "+f"(acc[10]), "+f"(acc[11]),
          "+f"(acc[12]), "+f"(acc[13]), "+f"(acc[14]), "+f"(acc[15]), "+f"(acc[16]),
          "+f"(acc[17]), "+f"(acc[18]), "+f"(acc[19]), "+f"(acc[20]), "+f"(acc[21]),
          "+f"(acc[22]), "+f"(acc[23]), "+f"(acc[24]), "+f"(acc[25]), "+f"(acc[26]),
          "+f"(acc[27]), "+f"(acc[28]), "+f"(acc[29]), "+f"(acc[30]), "+f"(acc[31])
        : "l"(desc_a), "l"(desc_b), "r"(static_cast<uint32_t>(accumulate)));
}

}  // namespace nvlm
#endif
