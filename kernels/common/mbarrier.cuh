// mbarrier primitives (sm_90): the completion mechanism of TMA loads and the
// full/empty handshake of producer/consumer pipelines.
//
// An mbarrier completes a phase when its pending arrival count reaches zero
// and its transaction count (bytes announced with expect_tx, counted down by
// TMA) reaches zero; waiters poll the parity of the phase they wait for.
#pragma once
#include "common/ptx.cuh"

#if __CUDA_ARCH__ >= 900
namespace nvlm {

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrivals)
                 : "memory");
}

// Makes initialised barriers visible to the async proxy (TMA) and to other
// threads; follow with a block barrier before first use.
__device__ __forceinline__ void mbarrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` more transaction bytes for the
// current phase (the producer's arrival before issuing TMA loads).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Blocks until the phase with parity `phase` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t phase) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n"
        "}\n" ::"r"(smem_addr(bar)),
        "r"(phase)
        : "memory");
}

}  // namespace nvlm
#endif
