// The host emulation's CUtensorMap: the 128 bytes the driver encodes,
// holding here what cuTensorMapEncodeTiled was given (src/hopper.rs's
// TiledTensor), in the form common/tma.cuh reads.
#pragma once
#include <cstdint>

struct alignas(64) CUtensorMap {
    uint64_t address;  // host address of element (0, ..., 0)
    uint32_t rank;
    uint32_t element_bytes;
    uint64_t dims[5];           // innermost first
    uint64_t strides_bytes[5];  // [0] = element_bytes
    uint32_t box[5];
    uint32_t swizzle_bytes;  // 0 (none), 32, 64, 128
};
static_assert(sizeof(CUtensorMap) == 128, "the driver's CUtensorMap is 128 bytes");
