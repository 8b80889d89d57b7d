// Host emulation of kernels/common/tma.cuh. A load (into one CTA, or
// multicast into several of a cluster) is copied at once by the issuing
// thread: elements outside the tensor read as zeros, the box
// lands in shared memory in the map's swizzle, and the barrier receives
// the whole box's bytes (zero-filled elements count, as on the GPU). The
// box's innermost coordinate must be a multiple of 16 bytes. A
// store reads shared memory when its thread waits for it (the latest the
// ISA allows, so a kernel that rewrites the box before waiting stores the
// new bytes) and writes only the elements inside the tensor; its box may
// not start at a negative coordinate.
#pragma once
#include <cuda.h>
#include "common/mbarrier.cuh"

namespace emu {

// Calls `element(i, inside, offset)` for element i of the box at `coords`
// (innermost first): whether it lies in the tensor, and if so its byte
// offset from the map's address.
template <typename F>
inline void for_each_box_element(const CUtensorMap* map, const int32_t* coords, uint32_t rank,
                                 F element) {
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
        element(i, inside, offset);
    }
}

// The shared address of element i of a box at `box_addr`, checked as TMA
// requires (a 128-byte aligned box; a swizzled one aligned to its pattern).
inline uint32_t box_element_address(const CUtensorMap* map, uint32_t box_addr, uint64_t i) {
    const uint32_t swz = map->swizzle_bytes;
    if (box_addr % 128 != 0) fail("TMA box at shared %#x is not 128-byte aligned", box_addr);
    if (swz != 0) {
        // The swizzle pattern repeats every 8 rows of the span; the readers
        // (wgmma descriptors with base offset 0) assume it starts there.
        if (box_addr % (8 * swz) != 0)
            fail("TMA box at shared %#x is not aligned to the %u-byte swizzle's %u-byte pattern",
                 box_addr, swz, 8 * swz);
        if (map->box[0] * map->element_bytes != swz)
            fail("box rows of %u bytes with a %u-byte swizzle are not emulated",
                 map->box[0] * map->element_bytes, swz);
    }
    const uint32_t at = box_addr + static_cast<uint32_t>(i * map->element_bytes);
    return swz != 0 ? swizzle(at, swz) : at;
}

// The box's innermost coordinate must fall on a 16-byte boundary of the
// tensor's rows: on an H200 a bf16 load at x = 36 (72 bytes) stopped the
// kernel with an illegal instruction where x = 0 ran (2026-11-30).
inline void check_inner_coordinate(const CUtensorMap* map, int32_t x, const char* what) {
    if (static_cast<int64_t>(x) * map->element_bytes % 16 != 0)
        fail("%s at innermost coordinate %d: %d bytes, not a multiple of 16", what, x,
             x * static_cast<int32_t>(map->element_bytes));
}

// A load into CTA `cta` of the cluster: the box at shared address
// `dst_addr` of that CTA's shared memory, its bytes counted on `bar`, a
// barrier of that CTA.
inline void tma_load_to(uint32_t cta, uint32_t dst_addr, uint64_t* bar, const CUtensorMap* map,
                        const int32_t* coords, uint32_t rank) {
    if (map->rank != rank) fail("a %u-D TMA load with a rank-%u tensor map", rank, map->rank);
    check_inner_coordinate(map, coords[0], "a TMA load");
    const uint32_t elem = map->element_bytes;
    uint64_t bytes = 0;
    for_each_box_element(map, coords, rank, [&](uint64_t i, bool inside, uint64_t offset) {
        uint8_t* out = shared_bytes_of(cta, box_element_address(map, dst_addr, i), elem);
        static const uint8_t zeros[8] = {};
        async_write_shared(cta, out, inside ? global_bytes(map->address + offset, elem) : zeros,
                           elem);
        bytes += elem;
    });
    mbarrier_complete_tx(bar, static_cast<uint32_t>(bytes));
}

// `bar` may be a __shared__ variable here (one CTA's own barrier).
inline void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, const int32_t* coords,
                     uint32_t rank) {
    tma_load_to(cta_rank, shared_address(dst), bar, map, coords, rank);
}

struct TmaStore {
    const CUtensorMap* map;
    uint32_t src_addr;
    int32_t coords[2];
};
// This thread's stores not yet committed, and committed but not waited for.
inline thread_local std::vector<TmaStore> stores_issued, stores_committed;

inline void tma_store_run(const TmaStore& s) {
    const uint32_t elem = s.map->element_bytes;
    for_each_box_element(s.map, s.coords, 2, [&](uint64_t i, bool inside, uint64_t offset) {
        if (!inside) return;
        const uint8_t* from =
            async_read_shared(box_element_address(s.map, s.src_addr, i), elem, "a TMA store");
        // global_bytes checks the bounds; the launch's buffers are writable.
        std::memcpy(const_cast<uint8_t*>(global_bytes(s.map->address + offset, elem)), from, elem);
    });
}

inline void check_no_store_pending() {
    if (!stores_issued.empty() || !stores_committed.empty())
        fail("the block ended with %zu TMA stores never committed and %zu never waited for",
             stores_issued.size(), stores_committed.size());
}
inline const bool tma_store_check_registered =
    (end_of_block_checks().push_back(check_no_store_pending), true);

}  // namespace emu

namespace nvlm {

inline void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t x, int32_t y) {
    const int32_t coords[2] = {x, y};
    emu::tma_load(dst, map, bar, coords, 2);
}

// The box lands in every CTA of `cta_mask`, at the same offsets as `dst`
// and `bar` in this CTA.
inline void tma_load_2d_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t x,
                                  int32_t y, uint16_t cta_mask) {
    const uint32_t ctas = static_cast<uint32_t>(emu::cluster_ctas.size());
    if (cta_mask == 0 || (cta_mask >> ctas) != 0)
        emu::fail("multicast mask %#x in a cluster of %u CTAs", cta_mask, ctas);
    const int32_t coords[2] = {x, y};
    // Each CTA's barrier at `bar`'s offset: multicast barriers live in
    // dynamic shared memory (emulation.h).
    const uint32_t bar_addr = emu::shared_address(bar);
    for (uint32_t cta = 0; cta < ctas; ++cta) {
        if (cta_mask >> cta & 1)
            emu::tma_load_to(cta, emu::shared_address(dst),
                             reinterpret_cast<uint64_t*>(emu::shared_bytes_of(cta, bar_addr, 8)),
                             map, coords, 2);
    }
}

inline void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t x, int32_t y,
                        int32_t z, int32_t w) {
    const int32_t coords[4] = {x, y, z, w};
    emu::tma_load(dst, map, bar, coords, 4);
}

inline void tma_store_2d(const CUtensorMap* map, const void* src, int32_t x, int32_t y) {
    if (map->rank != 2) emu::fail("a 2-D TMA store with a rank-%u tensor map", map->rank);
    // A store's box may run past the tensor's far edges (those elements
    // are not written) but may not start before its first element (the
    // CUDA Programming Guide: the top-left corner cannot be negative).
    if (x < 0 || y < 0) emu::fail("a TMA store at (%d, %d): a negative coordinate", x, y);
    emu::check_inner_coordinate(map, x, "a TMA store");
    emu::stores_issued.push_back({map, emu::shared_address(src), {x, y}});
}

inline void tma_store_commit() {
    emu::stores_committed.insert(emu::stores_committed.end(), emu::stores_issued.begin(),
                                 emu::stores_issued.end());
    emu::stores_issued.clear();
}

inline void tma_store_wait_all() {
    for (const emu::TmaStore& s : emu::stores_committed) emu::tma_store_run(s);
    emu::stores_committed.clear();
}

}  // namespace nvlm
