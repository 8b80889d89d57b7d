// Host emulation of kernels/common/tma.cuh's loads: the box is copied at
// once by the issuing thread, elements outside the tensor read as zeros,
// the box lands in shared memory in the map's swizzle, and the barrier
// receives the whole box's bytes (zero-filled elements count, as on the
// GPU).
#pragma once
#include <cuda.h>
#include "common/mbarrier.cuh"

namespace emu {

inline void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, const int32_t* coords,
                     uint32_t rank) {
    if (map->rank != rank) fail("a %u-D TMA load with a rank-%u tensor map", rank, map->rank);
    const uint32_t elem = map->element_bytes, swz = map->swizzle_bytes;
    const uint32_t dst_addr = shared_address(dst);
    if (dst_addr % 128 != 0) fail("TMA destination %#x is not 128-byte aligned", dst_addr);
    if (swz != 0) {
        // The swizzle pattern repeats every 8 rows of the span; the readers
        // (wgmma descriptors with base offset 0) assume it starts there.
        if (dst_addr % (8 * swz) != 0)
            fail("TMA destination %#x is not aligned to the %u-byte swizzle's %u-byte pattern",
                 dst_addr, swz, 8 * swz);
        if (map->box[0] * elem != swz)
            fail("box rows of %u bytes with a %u-byte swizzle are not emulated", map->box[0] * elem,
                 swz);
    }
    uint64_t box_elements = 1;
    for (uint32_t d = 0; d < rank; ++d) box_elements *= map->box[d];
    for (uint64_t i = 0; i < box_elements; ++i) {
        uint64_t rest = i, offset = 0;
        bool inside = true;
        for (uint32_t d = 0; d < rank; ++d) {
            const int64_t c = static_cast<int64_t>(coords[d]) + static_cast<int64_t>(rest % map->box[d]);
            rest /= map->box[d];
            if (c < 0 || static_cast<uint64_t>(c) >= map->dims[d]) inside = false;
            else offset += static_cast<uint64_t>(c) * map->strides_bytes[d];
        }
        uint32_t at = dst_addr + static_cast<uint32_t>(i * elem);
        if (swz != 0) at = swizzle(at, swz);
        uint8_t* out = shared_bytes(at, elem);
        if (inside) std::memcpy(out, global_bytes(map->address + offset, elem), elem);
        else std::memset(out, 0, elem);
    }
    mbarrier_complete_tx(bar, static_cast<uint32_t>(box_elements * elem));
}

}  // namespace emu

namespace nvlm {

inline void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t x, int32_t y) {
    const int32_t coords[2] = {x, y};
    emu::tma_load(dst, map, bar, coords, 2);
}

inline void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t x, int32_t y,
                        int32_t z, int32_t w) {
    const int32_t coords[4] = {x, y, z, w};
    emu::tma_load(dst, map, bar, coords, 4);
}

}  // namespace nvlm
