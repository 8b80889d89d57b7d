// Small PTX helpers shared by the kernels: shared-memory addresses and the
// proxy fence that orders ordinary stores before async-proxy reads.
#pragma once
#include <stdint.h>

namespace nvlm {

// The 32-bit shared-window address PTX's shared-memory operands take.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if __CUDA_ARCH__ >= 900
// Shared memory written by ordinary stores and read next by TMA or wgmma
// (the async proxy) needs this in each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif

}  // namespace nvlm
