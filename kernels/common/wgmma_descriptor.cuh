// wgmma shared-memory matrix descriptors (PTX ISA, "Matrix Descriptor
// Format"): plain arithmetic, kept apart from the instructions
// (common/wgmma.cuh) so that the host emulation of the kernels
// (tests/host_emulation/cuda) decodes exactly what this encodes.
#pragma once
#include "common/ptx.cuh"

namespace nvlm {

// Shared-memory layouts wgmma understands; the value is the descriptor's
// bits 62-63.
enum class WgmmaSwizzle : uint64_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

// A shared-memory matrix descriptor. The two offsets (bytes) mean, after
// PTX's "leading" and "stride" dimension byte offsets:
// - K-major operand (K contiguous), no swizzle: 8x8 core matrices of 128
//   contiguous bytes; `leading` = between core matrices adjacent along K,
//   `stride` = between core matrices adjacent along M/N.
// - K-major, 128-byte swizzle: rows of 128 bytes, 8-row groups of 1024;
//   `leading` unused (a k16 step stays inside one 128-byte row), `stride` =
//   between 8-row groups. A k16 step advances the start address by 32 bytes.
// - MN-major (M/N contiguous), 128-byte swizzle: atoms of 8 K-rows x 64
//   elements; `leading` = between atoms adjacent along M/N, `stride` =
//   between 8-row groups along K.
// Swizzled tiles must start 1024-byte aligned (base offset 0).
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* tile, uint32_t leading_bytes,
                                                     uint32_t stride_bytes, WgmmaSwizzle swizzle) {
    const uint64_t start = (smem_addr(tile) & 0x3FFFF) >> 4;
    return start | (uint64_t((leading_bytes >> 4) & 0x3FFF) << 16) |
           (uint64_t((stride_bytes >> 4) & 0x3FFF) << 32) | (static_cast<uint64_t>(swizzle) << 62);
}

}  // namespace nvlm
