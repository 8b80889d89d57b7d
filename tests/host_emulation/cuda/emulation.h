// The runtime under the host emulation of the kernels: CUDA's keywords as
// plain C++, one std::thread per CUDA thread, one block (or one cluster of
// blocks) at a time, and the block's shared memory, barriers and warp
// shuffles. The PTX primitives
// (cp.async, ldmatrix, mma.sync, mbarrier, TMA, wgmma) are emulated in
// common/*.cuh beside this file, which replace kernels/common/ in the
// staged copy of the kernel source (src/host_emulation.rs); launch.h runs
// a launch.
//
// Every misuse the emulation can see (a shared address outside the
// launch's dynamic shared memory, a global read outside the buffers, a
// wait that never ends, a warpgroup whose threads disagree on a wgmma
// operand, an async-proxy read of ordinary stores no fence published)
// aborts with a message naming it.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
// Function-local statics are one object for every thread, as __shared__
// variables are one per block (blocks run one at a time). A kernel run in
// clusters of several CTAs (which run together) keeps all its shared
// state in dynamic shared memory, which is one per CTA.
#define __shared__ static
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// The kernels' sm_90a code paths.
#define __CUDA_ARCH_FEAT_SM90_ALL 1

using std::max;
using std::min;

struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};

struct alignas(8) uint2 {
    uint32_t x, y;
};

struct Dim3 {
    uint32_t x = 0, y = 0, z = 0;
};
thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;

namespace emu {

// This thread's index in its block, x fastest: what decides its warp and
// lane, whatever the block's shape.
inline thread_local uint32_t thread_rank = 0;

[[noreturn]] inline void fail(const char* format, ...) {
    va_list args;
    va_start(args, format);
    std::fprintf(stderr, "emulation: block (%u,%u,%u) thread (%u,%u,%u): ", blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::vfprintf(stderr, format, args);
    std::fprintf(stderr, "\n");
    va_end(args);
    std::abort();
}

// Far longer than any correct wait in these tests takes (a thread that
// ends its block early waits at the block's end for the whole block: a few
// seconds under a sanitizer on a loaded two-core machine); a wait this long
// is a deadlock.
constexpr auto kDeadlock = std::chrono::seconds(120);

// A reusable barrier for `n` threads. `on_complete`, if given, runs in the
// last thread to arrive, while every other one waits.
class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait(const char* what, void (*on_complete)() = nullptr) {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned gen = gen_;
        if (++waiting_ == n_) {
            if (on_complete) on_complete();
            waiting_ = 0;
            ++gen_;
            cv_.notify_all();
        } else if (!cv_.wait_for(lock, kDeadlock, [&] { return gen_ != gen; })) {
            fail("deadlock: %u of %u threads at %s", waiting_, n_, what);
        }
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned n_, waiting_ = 0, gen_ = 0;
};

// A named barrier (bar.sync / bar.arrive with an id): a phase completes
// when `threads` threads have arrived, each arrival counted; `sync`
// arrivals also wait for their phase to complete.
class NamedBarrier {
  public:
    void arrive(uint32_t threads, bool wait, const char* what) {
        if (threads == 0 || threads % 32 != 0) fail("%s: %u threads, not whole warps", what, threads);
        std::unique_lock<std::mutex> lock(m_);
        if (arrived_ == 0) {
            threads_ = threads;
        } else if (threads != threads_) {
            fail("%s: %u threads, but this phase of the barrier counts %u", what, threads, threads_);
        }
        const unsigned gen = gen_;
        if (++arrived_ == threads_) {
            arrived_ = 0;
            ++gen_;
            cv_.notify_all();
        } else if (wait && !cv_.wait_for(lock, kDeadlock, [&] { return gen_ != gen; })) {
            fail("deadlock: %u of %u threads at %s", arrived_, threads_, what);
        }
    }
    // Arrivals in the phase not yet complete.
    unsigned pending() {
        std::lock_guard<std::mutex> lock(m_);
        return arrived_;
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned threads_ = 0, arrived_ = 0, gen_ = 0;
};

// Shared-window address of the first byte of dynamic shared memory: after
// the block's static __shared__ variables, as on the GPU, so the kernels'
// own alignment of their tiles is exercised.
constexpr uint32_t kDynamicSmemBase = 0x50;

struct Block {
    std::unique_ptr<Barrier> all;
    std::vector<std::unique_ptr<Barrier>> warpgroups, warps;
    std::vector<float> shuffle;         // one slot per thread
    std::vector<uint32_t> warp_words;   // [thread][8]: collective operands
    std::vector<const char*> warp_op;   // [thread]: the warp-collective instruction it is at
    std::vector<float> wgmma_a;         // [warpgroup][64][16]: register A operands
    std::vector<uint64_t> wgmma_check;  // [thread][3]: operands every thread must agree on
    std::vector<uint8_t> smem;          // the dynamic shared memory
    // The dynamic shared memory as the async proxy (wgmma, TMA stores)
    // sees it: what TMA wrote, and ordinary stores once published
    // (publish_fenced_stores).
    std::vector<uint8_t> async_view;
    std::atomic<bool> proxy_fenced{false};  // a fence.proxy.async since the last publish
    std::vector<std::unique_ptr<NamedBarrier>> named;  // ids 1..15 (0 is __syncthreads)
};
// The CTAs of the cluster being run (one, unless the kernel's driver
// declares a cluster: emu::in_clusters_of in launch.h) and the index of
// each thread's own, its %cluster_ctarank.
inline std::vector<std::unique_ptr<Block>> cluster_ctas;
inline thread_local uint32_t cta_rank = 0;
inline Block& cta() { return *cluster_ctas[cta_rank]; }
// barrier.cluster: every thread of every CTA of the cluster.
inline std::unique_ptr<Barrier> cluster_barrier;

// Checks each thread runs when its block ends (registered by the
// primitives: a wgmma or cp.async never waited for).
inline std::vector<void (*)()>& end_of_block_checks() {
    static std::vector<void (*)()> checks;
    return checks;
}

// Global memory: the one buffer the launch file holds.
inline const uint8_t* global_begin = nullptr;
inline const uint8_t* global_end = nullptr;

// The state of `ctas` CTAs of `threads` threads each, run together.
inline void start(uint32_t ctas, uint32_t threads, uint32_t smem_bytes) {
    if (threads % 32 != 0) fail("%u threads: not whole warps", threads);
    cluster_barrier = std::make_unique<Barrier>(ctas * threads);
    for (uint32_t rank = 0; rank < ctas; ++rank) {
        auto b = std::make_unique<Block>();
        b->all = std::make_unique<Barrier>(threads);
        // Warpgroup barriers exist for whole warpgroups only: wgmma on a
        // partial one fails at its first use.
        for (uint32_t i = 0; i < threads / 128; ++i)
            b->warpgroups.push_back(std::make_unique<Barrier>(128));
        for (uint32_t i = 0; i < threads / 32; ++i) b->warps.push_back(std::make_unique<Barrier>(32));
        b->shuffle.assign(threads, 0.0f);
        b->warp_words.assign(threads * 8, 0);
        b->warp_op.assign(threads, "");
        b->wgmma_a.assign(threads / 128 * 64 * 16, 0.0f);
        b->wgmma_check.assign(threads * 3, 0);
        b->smem.assign(smem_bytes, 0);
        b->async_view.assign(smem_bytes, 0);
        for (int id = 0; id < 16; ++id) b->named.push_back(std::make_unique<NamedBarrier>());
        cluster_ctas.push_back(std::move(b));
    }
}

// Waits until every lane of this thread's warp reaches a warp-collective
// instruction, which must be the same one, `what` (a shuffle, an ldmatrix
// or mma.sync variant): PTX's .sync.aligned instructions are executed by
// the whole warp together. Lanes at different ones would otherwise meet
// at the same emulated warp barrier and mix their operands.
inline void warp_meet(const char* what) {
    const uint32_t t = thread_rank, warp = t / 32;
    cta().warp_op[t] = what;
    cta().warps[warp]->wait(what);
    const char* lane0 = cta().warp_op[warp * 32];
    if (std::strcmp(lane0, what) != 0)
        fail("lane %u is at %s while lane 0 of its warp is at %s: the warp must run a "
             "warp-collective instruction together",
             t % 32, what, lane0);
}

inline NamedBarrier& named_barrier(uint32_t id) {
    if (id == 0 || id >= 16) fail("named barrier %u: ids are 1..15 (0 is __syncthreads)", id);
    return *cta().named[id];
}

// A phase left incomplete when its block ends: arrivals nobody waited for,
// or a count that never matched the kernel's turns.
inline void check_named_barriers_idle() {
    for (uint32_t id = 1; id < 16; ++id) {
        if (const unsigned n = cta().named[id]->pending())
            fail("the block ended with %u threads arrived at named barrier %u", n, id);
    }
}

// 0xFF bytes: NaN in bf16, f16 and f32, so a read of shared memory no copy
// wrote shows up in the output.
inline void poison_smem() {
    std::fill(cta().smem.begin(), cta().smem.end(), 0xFF);
    std::fill(cta().async_view.begin(), cta().async_view.end(), 0xFF);
    cta().proxy_fenced = false;
}

// Ordinary stores to shared memory reach the async proxy once the writing
// thread has run fence.proxy.async and a barrier orders that fence before
// the reader. Here a fence by any thread of a CTA, then __syncthreads or
// barrier.cluster, publishes all of that CTA's stores (run as the
// barrier completes, with every thread waiting at it): a fence missing
// from only some of the writing threads is not caught, and a fence
// ordered by an mbarrier or named barrier instead is not recognised.
inline void publish_fenced_stores(Block& b) {
    if (b.proxy_fenced.exchange(false)) b.async_view = b.smem;
}
inline void publish_this_cta() { publish_fenced_stores(cta()); }
inline void publish_cluster() {
    for (auto& b : cluster_ctas) publish_fenced_stores(*b);
}

inline uint32_t shared_address(const void* p) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    const uint8_t* base = cta().smem.data();
    if (b < base || b > base + cta().smem.size())
        fail("smem_addr(%p): not in the dynamic shared memory", p);
    return kDynamicSmemBase + static_cast<uint32_t>(b - base);
}

// The bytes at shared address [address, address + bytes) of CTA `rank`
// of the cluster (the same address names the same bytes in each CTA's
// window, which is how multicast TMA and remote mbarriers address them).
inline uint8_t* shared_bytes_of(uint32_t rank, uint32_t address, uint32_t bytes) {
    if (rank >= cluster_ctas.size())
        fail("CTA %u of a cluster of %zu", rank, cluster_ctas.size());
    std::vector<uint8_t>& smem = cluster_ctas[rank]->smem;
    if (address < kDynamicSmemBase || address - kDynamicSmemBase + bytes > smem.size())
        fail("shared address %#x (+%u bytes) is outside the launch's %zu bytes of dynamic shared "
             "memory",
             address, bytes, smem.size());
    return smem.data() + (address - kDynamicSmemBase);
}

// The same in this thread's own CTA.
inline uint8_t* shared_bytes(uint32_t address, uint32_t bytes) {
    return shared_bytes_of(cta_rank, address, bytes);
}

// An async-proxy write (TMA) of `bytes` bytes at `to`, an address in CTA
// `rank`'s shared memory from shared_bytes_of: it lands in both views.
inline void async_write_shared(uint32_t rank, uint8_t* to, const void* from, uint32_t bytes) {
    Block& b = *cluster_ctas[rank];
    std::memcpy(to, from, bytes);
    std::memcpy(b.async_view.data() + (to - b.smem.data()), from, bytes);
}

// An async-proxy read (`reader`: wgmma, a TMA store) of this CTA's shared
// memory, which must find the bytes the async proxy sees: a difference is
// an ordinary store not published to it (publish_fenced_stores).
inline const uint8_t* async_read_shared(uint32_t address, uint32_t bytes, const char* reader) {
    const uint8_t* p = shared_bytes(address, bytes);
    const uint8_t* seen = cta().async_view.data() + (p - cta().smem.data());
    if (std::memcmp(p, seen, bytes) != 0)
        fail("%s reads shared %#x (+%u bytes), written by ordinary stores that no "
             "fence.proxy.async followed by __syncthreads made visible to the async proxy",
             reader, address, bytes);
    return p;
}

inline const uint8_t* global_bytes(uint64_t address, uint64_t bytes) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(address);
    if (p < global_begin || p + bytes > global_end)
        fail("global read of %llu bytes at %p is outside the buffers",
             static_cast<unsigned long long>(bytes), static_cast<const void*>(p));
    return p;
}

// The 16-byte chunk permutation of the 32/64/128-byte swizzles: address
// bits [4, 4 + b) ^= bits [7, 7 + b) (cute's Swizzle<b, 4, 3>), on the
// shared-window address, as TMA and wgmma both apply it.
inline uint32_t swizzle(uint32_t address, uint32_t span_bytes) {
    const uint32_t mask = span_bytes / 16 - 1;  // 7, 3, 1
    return address ^ (((address >> 7) & mask) << 4);
}

}  // namespace emu

inline void __syncthreads() { emu::cta().all->wait("__syncthreads", emu::publish_this_cta); }

inline float __shfl_xor_sync(uint32_t mask, float value, int lane_mask) {
    if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync with a partial mask");
    const uint32_t t = emu::thread_rank, warp = t / 32;
    emu::cta().shuffle[t] = value;
    emu::warp_meet("__shfl_xor_sync");
    const float other = emu::cta().shuffle[warp * 32 + ((t % 32) ^ lane_mask)];
    emu::cta().warps[warp]->wait("__shfl_xor_sync");
    return other;
}

inline float __log2f(float x) { return std::log2(x); }
// The GPU's rsqrtf is within 2 ulp of this; the tests' tolerances allow it.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __uint_as_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline float __int_as_float(int32_t bits) { return __uint_as_float(static_cast<uint32_t>(bits)); }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
// CUDA's documented results: hi:lo shifted right by shift & 31, the low
// word; c plus the four products of a's and b's unsigned bytes, modulo 2^32.
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t shift) {
    return static_cast<uint32_t>(((static_cast<uint64_t>(hi) << 32) | lo) >> (shift & 31));
}
inline uint32_t __dp4a(uint32_t a, uint32_t b, uint32_t c) {
    for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xFF) * ((b >> (8 * i)) & 0xFF);
    return c;
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
[[noreturn]] inline void __trap() { emu::fail("__trap"); }
