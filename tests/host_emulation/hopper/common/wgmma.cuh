// Host emulation of kernels/common/wgmma.cuh. The descriptors come from the
// kernels' own encoder (common/wgmma_descriptor.cuh, copied unchanged) and
// are decoded here after the PTX ISA's "Matrix Descriptor Format" and
// "Canonical Layouts" (in cute notation, T = 8 16-bit elements = 16 bytes):
//   K-major, no swizzle:  ((8,m),(T,2k)) : ((1T,SBO),(1,LBO))
//   K-major, 128B:        ((8,m),(T,2k)) : ((8T,SBO),(1,T))
//   MN-major, 128B:       ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))
// then the 128-byte swizzle on the shared-window address. Fragments follow
// the ISA's m64nNk16 figures: D as the comment in kernels/common/wgmma.cuh,
// A from registers as mma.sync's m16n8k16 A fragment, warp w holding rows
// 16w..16w+15. Each wgmma runs to completion when issued, so commit and
// wait have nothing to do; every thread of the warpgroup must issue it with
// the same descriptors, which is checked.
#pragma once
#include "common/ptx.cuh"
#include "common/wgmma_descriptor.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace emu {

struct Descriptor {
    uint32_t start, leading, stride, base_offset, swizzle_bytes;
};

inline Descriptor decode(uint64_t desc) {
    Descriptor d;
    d.start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    d.leading = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
    d.stride = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    d.base_offset = static_cast<uint32_t>((desc >> 49) & 7);
    static const uint32_t swizzle_bytes[4] = {0, 128, 64, 32};
    d.swizzle_bytes = swizzle_bytes[desc >> 62];
    if ((desc >> 14) & 3 || (desc >> 30) & 3 || (desc >> 46) & 7 || (desc >> 52) & 0x3FF)
        fail("descriptor %#llx sets reserved bits", (unsigned long long)desc);
    if (d.base_offset != 0) fail("descriptor base offset %u is not emulated", d.base_offset);
    if (d.swizzle_bytes == 64 || d.swizzle_bytes == 32)
        fail("%u-byte swizzle descriptors are not emulated", d.swizzle_bytes);
    return d;
}

template <typename T>
inline float load_element(uint32_t address, const Descriptor& d) {
    if (d.swizzle_bytes != 0) address = swizzle(address, d.swizzle_bytes);
    T value;
    std::memcpy(&value, shared_bytes(address, 2), 2);
    return emu_to_float(value);
}

// Element (row, k) of a K-major operand (A or B, 16 columns of K).
template <typename T>
inline float k_major(const Descriptor& d, uint32_t row, uint32_t k) {
    uint32_t address;
    if (d.swizzle_bytes == 0) {
        address = d.start + (row % 8) * 16 + (row / 8) * d.stride + (k % 8) * 2 + (k / 8) * d.leading;
    } else {
        address = d.start + (row % 8) * 128 + (row / 8) * d.stride + k * 2;
    }
    return load_element<T>(address, d);
}

// Element (k, n) of an MN-major B operand (N contiguous).
template <typename T>
inline float mn_major(const Descriptor& d, uint32_t k, uint32_t n) {
    if (d.swizzle_bytes != 128) fail("MN-major operands are emulated with the 128-byte swizzle only");
    const uint32_t address = d.start + (n % 64) * 2 + (n / 64) * d.leading + (k % 8) * 128 + (k / 8) * d.stride;
    return load_element<T>(address, d);
}

// Every thread of the warpgroup issues the same instruction: the calling
// threads meet, and each checks its operands against the first thread's.
inline void check_uniform(uint64_t a, uint64_t b, bool accumulate) {
    const uint32_t t = threadIdx.x, group = t / 128;
    uint64_t* mine = &block.wgmma_check[3 * t];
    mine[0] = a;
    mine[1] = b;
    mine[2] = accumulate;
    block.warpgroups[group]->wait("wgmma");
    const uint64_t* first = &block.wgmma_check[3 * (group * 128)];
    if (mine[0] != first[0] || mine[1] != first[1] || mine[2] != first[2])
        fail("wgmma operands differ from thread %u's in the same warpgroup", group * 128);
}

// acc[4j + i] of this thread: row, column of D.
inline uint32_t d_row(uint32_t i) { return 16 * (threadIdx.x % 128 / 32) + threadIdx.x % 32 / 4 + 8 * (i % 4 / 2); }
inline uint32_t d_col(uint32_t i) { return 8 * (i / 4) + 2 * (threadIdx.x % 4) + i % 2; }

}  // namespace emu

namespace nvlm {

inline void wgmma_fence() {}
inline void wgmma_commit_group() {}
template <int Pending>
inline void wgmma_wait_group() {}
template <int N>
inline void wgmma_fence_operands(float (&)[N]) {}

// acc (64 x N) (+)= A (64 x 16, K-major) * B (N x 16, K-major)^T.
template <int N, typename T>
inline void wgmma_ss(float (&acc)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    emu::check_uniform(desc_a, desc_b, accumulate);
    const emu::Descriptor a = emu::decode(desc_a), b = emu::decode(desc_b);
    for (uint32_t i = 0; i < N / 2; ++i) {
        const uint32_t row = emu::d_row(i), col = emu::d_col(i);
        float sum = 0.0f;
        for (uint32_t k = 0; k < 16; ++k)
            sum = std::fma(emu::k_major<T>(a, row, k), emu::k_major<T>(b, col, k), sum);
        acc[i] = accumulate ? acc[i] + sum : sum;
    }
    // No thread may start the next wgmma before all have read their operands.
    emu::block.warpgroups[threadIdx.x / 128]->wait("wgmma");
}

// acc (64 x N) (+)= A (64 x 16, registers) * B (16 x N, MN-major).
template <int N, typename T>
inline void wgmma_rs(float (&acc)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
    const uint32_t t = threadIdx.x % 128, group = threadIdx.x / 128;
    float* a_tile = &emu::block.wgmma_a[group * 64 * 16];
    const uint32_t r = 16 * (t / 32) + t % 32 / 4, q = t % 4;
    for (uint32_t reg = 0; reg < 4; ++reg) {
        const uint32_t row = r + 8 * (reg % 2), k = 2 * q + 8 * (reg / 2);
        T lo, hi;
        const uint16_t lo_bits = static_cast<uint16_t>(a[reg]), hi_bits = static_cast<uint16_t>(a[reg] >> 16);
        std::memcpy(&lo, &lo_bits, 2);
        std::memcpy(&hi, &hi_bits, 2);
        a_tile[row * 16 + k] = emu_to_float(lo);
        a_tile[row * 16 + k + 1] = emu_to_float(hi);
    }
    emu::check_uniform(0, desc_b, accumulate);  // also: every A fragment is in place
    const emu::Descriptor b = emu::decode(desc_b);
    for (uint32_t i = 0; i < N / 2; ++i) {
        const uint32_t row = emu::d_row(i), col = emu::d_col(i);
        float sum = 0.0f;
        for (uint32_t k = 0; k < 16; ++k) sum = std::fma(a_tile[row * 16 + k], emu::mn_major<T>(b, k, col), sum);
        acc[i] = accumulate ? acc[i] + sum : sum;
    }
    emu::block.warpgroups[group]->wait("wgmma");
}

}  // namespace nvlm
