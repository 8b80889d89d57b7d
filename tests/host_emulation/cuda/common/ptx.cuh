// Host emulation of kernels/common/ptx.cuh.
#pragma once
#include "emulation.h"

namespace nvlm {

inline uint32_t smem_addr(const void* p) { return emu::shared_address(p); }

inline uint8_t* dynamic_smem() { return emu::cta().smem.data(); }

template <uint32_t Id, uint32_t Threads>
inline void named_barrier_sync() {
    static_assert(Id >= 1 && Id < 16 && Threads % 32 == 0, "named barrier");
    emu::named_barrier(Id).arrive(Threads, true, "bar.sync");
}
template <uint32_t Id, uint32_t Threads>
inline void named_barrier_arrive() {
    static_assert(Id >= 1 && Id < 16 && Threads % 32 == 0, "named barrier");
    emu::named_barrier(Id).arrive(Threads, false, "bar.arrive");
}

// Marks this CTA's ordinary stores for publishing to the async proxy at
// the next __syncthreads or barrier.cluster (emu::publish_fenced_stores).
inline void fence_proxy_async_shared() { emu::cta().proxy_fenced = true; }

// Register counts only constrain the hardware; these check what ptxas
// would reject.
template <uint32_t Registers>
inline void warpgroup_registers_release() {
    static_assert(Registers % 8 == 0 && Registers >= 24 && Registers <= 256, "setmaxnreg range");
}
template <uint32_t Registers>
inline void warpgroup_registers_claim() {
    static_assert(Registers % 8 == 0 && Registers >= 24 && Registers <= 256, "setmaxnreg range");
}

inline float fast_exp2(float x) { return std::exp2(x); }

}  // namespace nvlm
