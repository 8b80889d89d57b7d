// Small PTX helpers shared by the kernels: shared-memory addresses and the
// proxy fence that orders ordinary stores before async-proxy reads.
#pragma once
#include <stdint.h>

namespace nvlm {

// The 32-bit shared-window address PTX's shared-memory operands take.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The block's dynamic shared memory (the launch's shared_mem_bytes). A
// function rather than a declaration in each kernel, so that the host
// emulation can supply its own.
__device__ __forceinline__ uint8_t* dynamic_smem() {
    extern __shared__ __align__(16) uint8_t nvlm_dynamic_smem[];
    return nvlm_dynamic_smem;
}

// Named barrier `Id` (1..15; 0 is __syncthreads) over `Threads` threads, a
// multiple of 32: `sync` counts this warp in and waits for the barrier to
// complete, `arrive` only counts it in. Warpgroups take turns with them.
// Immediate ids: with an id in a register ptxas reserves all 16 barriers.
template <uint32_t Id, uint32_t Threads>
__device__ __forceinline__ void named_barrier_sync() {
    static_assert(Id >= 1 && Id < 16 && Threads % 32 == 0, "named barrier");
    asm volatile("bar.sync %0, %1;" ::"n"(Id), "n"(Threads) : "memory");
}
template <uint32_t Id, uint32_t Threads>
__device__ __forceinline__ void named_barrier_arrive() {
    static_assert(Id >= 1 && Id < 16 && Threads % 32 == 0, "named barrier");
    asm volatile("bar.arrive %0, %1;" ::"n"(Id), "n"(Threads) : "memory");
}

#if __CUDA_ARCH__ >= 900
// Shared memory written by ordinary stores and read next by TMA or wgmma
// (the async proxy) needs this in each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Warpgroup register reallocation: a producer gives registers back, the
// math warpgroups take them. Needs a register cap at kernel entry
// (__launch_bounds__(threads, 1)) and a warpgroup-uniform branch.
template <uint32_t Registers>
__device__ __forceinline__ void warpgroup_registers_release() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Registers));
}
template <uint32_t Registers>
__device__ __forceinline__ void warpgroup_registers_claim() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Registers));
}
#endif

// 2^x by the hardware approximation (2 ulp), the exponential of the online
// softmax (2^-inf = +0, which masked keys rely on); exp2f without
// fast-math is several instructions.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

}  // namespace nvlm
