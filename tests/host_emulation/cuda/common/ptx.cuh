// Host emulation of kernels/common/ptx.cuh.
#pragma once
#include "emulation.h"

namespace nvlm {

inline uint32_t smem_addr(const void* p) { return emu::shared_address(p); }

inline uint8_t* dynamic_smem() { return emu::block.smem.data(); }

// Ordering between the generic and async proxies: the emulated TMA and
// wgmma read and write memory synchronously, so there is nothing to order.
inline void fence_proxy_async_shared() {}

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
