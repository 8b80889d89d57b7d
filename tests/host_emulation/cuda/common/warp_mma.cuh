// Host emulation of kernels/common/warp_mma.cuh, after the PTX ISA:
// - cp.async: the 16 destination bytes become NaN bytes (0xFF) when the
//   copy is issued and receive the data (or zeros) when cp.async.wait_group
//   retires its group, so a read before the wait sees NaN and, under the
//   thread sanitizer, a write racing another thread's read is reported
//   wherever the hardware could make it;
// - ldmatrix and mma.sync: warp-collective, every lane's operands meet in
//   the block's exchange area (every lane at the same variant, or the run
//   stops); fragments as in kernels/common/warp_mma.cuh.
#pragma once
#include "common/ptx.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <deque>
#include <type_traits>

namespace emu {

struct CpAsync {
    uint32_t smem;
    const uint8_t* global;  // nullptr: zero fill
};
thread_local std::vector<CpAsync> cp_async_open;
thread_local std::deque<std::vector<CpAsync>> cp_async_committed;

inline void check_no_cp_async_in_flight() {
    for (const auto& group : cp_async_committed)
        if (!group.empty()) fail("the block ended with cp.async copies never waited for");
    if (!cp_async_open.empty()) fail("the block ended with cp.async copies never committed");
    cp_async_committed.clear();
}
inline const bool cp_async_check_registered =
    (end_of_block_checks().push_back(check_no_cp_async_in_flight), true);

// The warp's exchange area (lane l's words at 8 l), after all 32 lanes
// wrote theirs at the same instruction `what`; call warp_done() before the
// area is written again.
inline const uint32_t* warp_exchange(const uint32_t* mine, uint32_t words, const char* what) {
    const uint32_t t = emu::thread_rank, warp = t / 32;
    std::memcpy(&cta().warp_words[8 * t], mine, words * 4);
    warp_meet(what);
    return &cta().warp_words[8 * (warp * 32)];
}
inline void warp_done(const char* what) { cta().warps[emu::thread_rank / 32]->wait(what); }

inline uint16_t shared_u16(uint32_t address) {
    uint16_t v;
    std::memcpy(&v, shared_bytes(address, 2), 2);
    return v;
}

template <typename T>
float element(uint16_t bits) {
    T value;
    std::memcpy(&value, &bits, 2);
    return emu_to_float(value);
}

}  // namespace emu

namespace nvlm {

inline void cp_async_16(uint32_t smem, const void* global, bool valid) {
    if (smem % 16 != 0) emu::fail("cp.async to shared address %#x, not 16-byte aligned", smem);
    const uint8_t* src = nullptr;
    if (valid) {
        src = static_cast<const uint8_t*>(global);
        if (reinterpret_cast<uintptr_t>(src) % 16 != 0) emu::fail("cp.async from %p, not 16-byte aligned", global);
        emu::global_bytes(reinterpret_cast<uint64_t>(src), 16);
    }
    std::memset(emu::shared_bytes(smem, 16), 0xFF, 16);
    emu::cp_async_open.push_back({smem, src});
}

inline void cp_async_commit() {
    emu::cp_async_committed.push_back(std::move(emu::cp_async_open));
    emu::cp_async_open.clear();
}

template <int kPending>
inline void cp_async_wait() {
    while (emu::cp_async_committed.size() > static_cast<size_t>(kPending)) {
        for (const emu::CpAsync& c : emu::cp_async_committed.front()) {
            uint8_t* dst = emu::shared_bytes(c.smem, 16);
            if (c.global) std::memcpy(dst, c.global, 16);
            else std::memset(dst, 0, 16);
        }
        emu::cp_async_committed.pop_front();
    }
}

inline void ldmatrix_x4(uint32_t r[4], uint32_t smem) {
    const uint32_t* rows = emu::warp_exchange(&smem, 1, "ldmatrix.x4");
    const uint32_t lane = emu::thread_rank % 32, g = lane / 4, q = lane % 4;
    for (uint32_t i = 0; i < 4; ++i) {
        const uint32_t row = rows[8 * (8 * i + g)];
        if (row % 16 != 0) emu::fail("ldmatrix row address %#x, not 16-byte aligned", row);
        std::memcpy(&r[i], emu::shared_bytes(row + 4 * q, 4), 4);
    }
    emu::warp_done("ldmatrix");
}

inline void ldmatrix_x4_trans(uint32_t r[4], uint32_t smem) {
    const uint32_t* rows = emu::warp_exchange(&smem, 1, "ldmatrix.x4.trans");
    const uint32_t lane = emu::thread_rank % 32, g = lane / 4, q = lane % 4;
    for (uint32_t i = 0; i < 4; ++i) {
        const uint32_t row0 = rows[8 * (8 * i + 2 * q)], row1 = rows[8 * (8 * i + 2 * q + 1)];
        if (row0 % 16 != 0 || row1 % 16 != 0) emu::fail("ldmatrix row address not 16-byte aligned");
        r[i] = emu::shared_u16(row0 + 2 * g) | static_cast<uint32_t>(emu::shared_u16(row1 + 2 * g)) << 16;
    }
    emu::warp_done("ldmatrix");
}

template <typename T>
inline void mma_m16n8k16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
    const uint32_t* all = emu::warp_exchange(
        mine, 6, std::is_same<T, __nv_bfloat16>::value ? "mma.sync bf16" : "mma.sync f16");
    const uint32_t lane = emu::thread_rank % 32, g = lane / 4, q = lane % 4;
    // Element (row, k) of A and (k, n) of B, from the lanes that hold them.
    const auto a_at = [&](uint32_t row, uint32_t k) {
        const uint32_t* w = all + 8 * (4 * (row % 8) + (k % 8) / 2);
        const uint32_t reg = (row / 8) + 2 * (k / 8);
        return emu::element<T>(static_cast<uint16_t>(w[reg] >> (16 * (k % 2))));
    };
    const auto b_at = [&](uint32_t k, uint32_t n) {
        const uint32_t* w = all + 8 * (4 * n + (k % 8) / 2);
        return emu::element<T>(static_cast<uint16_t>(w[4 + k / 8] >> (16 * (k % 2))));
    };
    float out[4];
    for (uint32_t e = 0; e < 4; ++e) {
        const uint32_t row = g + 8 * (e / 2), col = 2 * q + e % 2;
        float sum = 0.0f;
        for (uint32_t k = 0; k < 16; ++k) sum = std::fma(a_at(row, k), b_at(k, col), sum);
        out[e] = c[e] + sum;
    }
    emu::warp_done("mma.sync");
    for (uint32_t e = 0; e < 4; ++e) c[e] = out[e];
}

}  // namespace nvlm
