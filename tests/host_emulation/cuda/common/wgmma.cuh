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
// 16w..16w+15.
//
// Asynchrony as the ISA states it: a wgmma runs when wgmma.wait_group
// retires its group, not when issued. Its operands (shared memory and the
// A registers) are read at issue and again when it runs, and must not
// have changed in between; its accumulator registers must not be written
// while it is in flight, and hold a NaN then, so that a result read
// before its wait cannot pass; a group never waited for is an error at
// the end of the block. Every thread of the warpgroup must issue the same
// wgmma (the same descriptors), which is checked.
#pragma once
#include "common/ptx.cuh"
#include "common/wgmma_descriptor.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <deque>

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
    std::memcpy(&value, async_read_shared(address, 2, "wgmma"), 2);
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

// The calling warpgroup's threads meet; each checks that its operands
// match the first thread's.
inline void check_uniform(uint64_t a, uint64_t b, bool accumulate) {
    const uint32_t t = emu::thread_rank, group = t / 128;
    if (group >= cta().warpgroups.size()) fail("wgmma from a block of %u threads: a partial warpgroup",
                                                   blockDim.x * blockDim.y * blockDim.z);
    uint64_t* mine = &cta().wgmma_check[3 * t];
    mine[0] = a;
    mine[1] = b;
    mine[2] = accumulate;
    cta().warpgroups[group]->wait("wgmma");
    const uint64_t* first = &cta().wgmma_check[3 * (group * 128)];
    if (mine[0] != first[0] || mine[1] != first[1] || mine[2] != first[2])
        fail("wgmma operands differ from thread %u's in the same warpgroup", group * 128);
    cta().warpgroups[group]->wait("wgmma");
}

// acc[i] of this thread: row, column of D.
inline uint32_t d_row(uint32_t i) { return 16 * (emu::thread_rank % 128 / 32) + emu::thread_rank % 32 / 4 + 8 * (i % 4 / 2); }
inline uint32_t d_col(uint32_t i) { return 8 * (i / 4) + 2 * (emu::thread_rank % 4) + i % 2; }

// A wgmma issued by this thread and not yet run.
struct Wgmma {
    float* acc;
    uint32_t acc_count;  // N / 2
    bool accumulate;
    // The accumulators' values for this wgmma, held here while `acc`
    // holds kInFlightBits, when it is the first in flight to write them.
    std::vector<float> acc_held;
    const uint32_t* a_registers;  // nullptr: A in shared memory
    uint32_t a_at_issue[4];
    // A's registers into the warpgroup's [64][16] tile (A from registers).
    void (*unpack_a)(const uint32_t (&)[4], float*);
    uint64_t desc_a, desc_b;
    // This thread's rows of A (shared-memory A) and columns of B.
    std::vector<float> (*operands)(const Wgmma&);
    std::vector<float> operands_at_issue;
    // acc (+)= this thread's part of the product.
    void (*run)(Wgmma&, const std::vector<float>& operands, const float* a_tile);
};

thread_local std::vector<Wgmma> open_group;
thread_local std::deque<std::vector<Wgmma>> committed;

// The first wgmma in flight that writes `acc`, or nullptr.
inline Wgmma* first_in_flight(const float* acc) {
    for (auto& group : committed)
        for (Wgmma& w : group)
            if (w.acc == acc) return &w;
    for (Wgmma& w : open_group)
        if (w.acc == acc) return &w;
    return nullptr;
}

// What accumulators hold while a wgmma writing them is in flight: a quiet
// NaN with a payload, which any arithmetic on it carries to the output.
constexpr uint32_t kInFlightBits = 0x7fc0a5a5u;

// Moves `acc`'s values into `w` (the first wgmma in flight on them) and
// leaves kInFlightBits in the registers.
inline void hold_accumulators(Wgmma& w) {
    w.acc_held.assign(w.acc, w.acc + w.acc_count);
    for (uint32_t i = 0; i < w.acc_count; ++i) std::memcpy(&w.acc[i], &kInFlightBits, 4);
}

// Operand values of the elements this thread's accumulators need: rows
// r and r + 8 of A (when in shared memory), then its columns of B.
template <int N, typename T>
std::vector<float> ss_operands(const Wgmma& w) {
    const Descriptor a = decode(w.desc_a), b = decode(w.desc_b);
    std::vector<float> v;
    for (uint32_t h = 0; h < 2; ++h)
        for (uint32_t k = 0; k < 16; ++k) v.push_back(k_major<T>(a, d_row(2 * h), k));
    for (uint32_t i = 0; i < N / 2; i += 4)
        for (uint32_t e = 0; e < 2; ++e)
            for (uint32_t k = 0; k < 16; ++k) v.push_back(k_major<T>(b, d_col(i + e), k));
    return v;
}

template <int N, typename T>
std::vector<float> rs_operands(const Wgmma& w) {
    const Descriptor b = decode(w.desc_b);
    std::vector<float> v;
    for (uint32_t i = 0; i < N / 2; i += 4)
        for (uint32_t e = 0; e < 2; ++e)
            for (uint32_t k = 0; k < 16; ++k) v.push_back(mn_major<T>(b, k, d_col(i + e)));
    return v;
}

// `a_rows`: A's rows r and r + 8 (16 values each); `b_cols`: B's columns
// in the order of the operand vectors above.
inline void multiply(Wgmma& w, const float* a_rows, const float* b_cols) {
    for (uint32_t i = 0; i < w.acc_count; ++i) {
        const float* a = a_rows + 16 * (i % 4 / 2);
        const float* b = b_cols + 16 * (2 * (i / 4) + i % 2);
        float sum = 0.0f;
        for (uint32_t k = 0; k < 16; ++k) sum = std::fma(a[k], b[k], sum);
        w.acc[i] = w.accumulate ? w.acc[i] + sum : sum;
    }
}

inline void run_ss(Wgmma& w, const std::vector<float>& operands, const float*) {
    multiply(w, operands.data(), operands.data() + 32);
}

inline void run_rs(Wgmma& w, const std::vector<float>& operands, const float* a_tile) {
    float a_rows[32];
    const uint32_t r = d_row(0);
    std::memcpy(a_rows, a_tile + r * 16, 16 * sizeof(float));
    std::memcpy(a_rows + 16, a_tile + (r + 8) * 16, 16 * sizeof(float));
    multiply(w, a_rows, operands.data());
}

template <typename T>
void unpack_a(const uint32_t (&a)[4], float* a_tile) {
    const uint32_t t = emu::thread_rank % 128;
    const uint32_t r = 16 * (t / 32) + t % 32 / 4, q = t % 4;
    for (uint32_t reg = 0; reg < 4; ++reg) {
        const uint32_t row = r + 8 * (reg % 2), k = 2 * q + 8 * (reg / 2);
        const uint16_t halves[2] = {static_cast<uint16_t>(a[reg]), static_cast<uint16_t>(a[reg] >> 16)};
        for (uint32_t e = 0; e < 2; ++e) {
            T value;
            std::memcpy(&value, &halves[e], 2);
            a_tile[row * 16 + k + e] = emu_to_float(value);
        }
    }
}

// Whether this thread has run wgmma.fence since its block began or since
// its last wait_group. PTX asks for the fence before the first wgmma and
// between any access of a wgmma's registers and the wgmma: the emulation
// cannot see register accesses, so it asks for one after every wait (the
// point past which the kernel reads the results and writes new operands).
inline thread_local bool wgmma_fenced = false;

inline void issue(float* acc, uint32_t acc_count, const uint32_t* a_registers,
                  void (*unpack)(const uint32_t (&)[4], float*), uint64_t desc_a, uint64_t desc_b,
                  bool accumulate, std::vector<float> (*operands)(const Wgmma&),
                  void (*run)(Wgmma&, const std::vector<float>&, const float*)) {
    if (!wgmma_fenced)
        fail("a wgmma issued with no wgmma.fence since the block began or since this thread's "
             "last wgmma wait_group");
    check_uniform(desc_a, desc_b, accumulate);
    Wgmma w{};
    w.acc = acc;
    w.acc_count = acc_count;
    w.accumulate = accumulate;
    const bool first_on_acc = first_in_flight(acc) == nullptr;
    w.a_registers = a_registers;
    if (a_registers) std::memcpy(w.a_at_issue, a_registers, sizeof w.a_at_issue);
    w.unpack_a = unpack;
    w.desc_a = desc_a;
    w.desc_b = desc_b;
    w.operands = operands;
    w.operands_at_issue = operands(w);
    w.run = run;
    open_group.push_back(std::move(w));
    if (first_on_acc) hold_accumulators(open_group.back());
}

inline void run_group(std::vector<Wgmma>& group) {
    const uint32_t warpgroup = emu::thread_rank / 128;
    float* a_tile = &cta().wgmma_a[warpgroup * 64 * 16];
    for (Wgmma& w : group) {
        const std::vector<float> now = w.operands(w);
        if (std::memcmp(now.data(), w.operands_at_issue.data(), now.size() * sizeof(float)) != 0)
            fail("a wgmma's shared-memory operand changed between its issue and its wait");
        if (!w.acc_held.empty()) {
            for (uint32_t i = 0; i < w.acc_count; ++i)
                if (std::memcmp(&w.acc[i], &kInFlightBits, 4) != 0)
                    fail("accumulator registers written while a wgmma on them was in flight");
            std::memcpy(w.acc, w.acc_held.data(), w.acc_count * sizeof(float));
        }
        if (w.a_registers) {
            if (std::memcmp(w.a_registers, w.a_at_issue, sizeof w.a_at_issue) != 0)
                fail("A registers written while the wgmma reading them was in flight");
            w.unpack_a(w.a_at_issue, a_tile);
        }
        cta().warpgroups[warpgroup]->wait("wgmma run");
        w.run(w, now, a_tile);
        cta().warpgroups[warpgroup]->wait("wgmma run");
    }
}

inline void check_no_wgmma_in_flight() {
    if (!open_group.empty() || !committed.empty())
        fail("the block ended with wgmmas issued and never waited for");
}
inline const bool wgmma_check_registered =
    (end_of_block_checks().push_back(check_no_wgmma_in_flight), true);
// The next block starts unfenced (run as a check, at each block's end).
inline void forget_wgmma_fence() { wgmma_fenced = false; }
inline const bool wgmma_fence_reset_registered =
    (end_of_block_checks().push_back(forget_wgmma_fence), true);

}  // namespace emu

namespace nvlm {

inline void wgmma_fence() { emu::wgmma_fenced = true; }

inline void wgmma_commit_group() {
    emu::committed.push_back(std::move(emu::open_group));
    emu::open_group.clear();
}

// Runs every committed group but the `Pending` most recent.
template <int Pending>
inline void wgmma_wait_group() {
    while (emu::committed.size() > static_cast<size_t>(Pending)) {
        std::vector<emu::Wgmma> group = std::move(emu::committed.front());
        emu::committed.pop_front();
        emu::run_group(group);
        // Accumulators a later wgmma still writes stay unreadable.
        for (const emu::Wgmma& w : group) {
            emu::Wgmma* next = emu::first_in_flight(w.acc);
            if (next && next->acc_held.empty()) emu::hold_accumulators(*next);
        }
    }
    emu::wgmma_fenced = false;
}

template <int N>
inline void wgmma_fence_operands(float (&)[N]) {}
template <int N>
inline void wgmma_fence_operands(uint32_t (&)[N][4]) {}

// acc (64 x N) (+)= A (64 x 16, K-major) * B (N x 16, K-major)^T.
template <int N, typename T>
inline void wgmma_ss(float (&acc)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    emu::issue(acc, N / 2, nullptr, nullptr, desc_a, desc_b, accumulate, emu::ss_operands<N, T>,
               emu::run_ss);
}

// acc (64 x N) (+)= A (64 x 16, registers) * B (16 x N, MN-major).
template <int N, typename T>
inline void wgmma_rs(float (&acc)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
    emu::issue(acc, N / 2, a, emu::unpack_a<T>, 0, desc_b, accumulate, emu::rs_operands<N, T>,
               emu::run_rs);
}

}  // namespace nvlm
