// Host emulation of kernels/common/mbarrier.cuh: a phase completes when its
// pending arrivals and its transaction bytes both reach zero; waiters wait
// for the parity of a phase, as the hardware's try_wait.parity.
//
// Each barrier has its own lock, reached through a pointer kept in the
// barrier's own 8 bytes, so that the only order between threads the
// thread sanitizer sees is the order each barrier gives (arrive, then a
// wait that sees the phase complete), as on the GPU.
#pragma once
#include "common/ptx.cuh"

namespace emu {

struct Mbarrier {
    std::mutex mutex;
    std::condition_variable changed;
    uint32_t arrivals = 0;  // per phase, from init
    uint32_t pending = 0;
    int64_t tx = 0;          // bytes announced minus bytes arrived
    uint64_t completed = 0;  // phases completed
};

// Every barrier state made, kept until the process ends (a block's
// barriers are re-initialised by the next block).
inline std::mutex mbarrier_registry_mutex;
inline std::vector<std::unique_ptr<Mbarrier>> mbarrier_registry;

// The state whose address mbarrier_init stored in the barrier's bytes (read
// after the block barrier that follows the init).
inline Mbarrier& mbarrier_state(const uint64_t* bar) {
    Mbarrier* m;
    std::memcpy(&m, bar, sizeof m);
    if (m == nullptr) fail("mbarrier %p used before mbarrier_init", (const void*)bar);
    return *m;
}

inline void mbarrier_arrive_locked(const uint64_t* bar, Mbarrier& m) {
    if (m.pending == 0)
        fail("arrival on mbarrier %p, whose phase has all its arrivals and awaits bytes",
             (const void*)bar);
    --m.pending;
}

inline void mbarrier_complete_if_done(const uint64_t* bar, Mbarrier& m) {
    if (m.pending == 0 && m.tx < 0)
        fail("mbarrier %p received %lld more bytes than its phase announced", (const void*)bar,
             (long long)-m.tx);
    if (m.pending == 0 && m.tx == 0) {
        ++m.completed;
        m.pending = m.arrivals;
        m.changed.notify_all();
    }
}

// TMA's complete_tx: `bytes` arrived for the barrier's current phase.
inline void mbarrier_complete_tx(uint64_t* bar, uint32_t bytes) {
    Mbarrier& m = mbarrier_state(bar);
    std::lock_guard<std::mutex> lock(m.mutex);
    m.tx -= bytes;
    mbarrier_complete_if_done(bar, m);
}

}  // namespace emu

namespace nvlm {

inline void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    if (arrivals == 0 || arrivals >= (1u << 20)) emu::fail("mbarrier_init with %u arrivals", arrivals);
    // The host address has the shared address's alignment (up to 16).
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) emu::fail("mbarrier %p is not 8-byte aligned", (void*)bar);
    emu::Mbarrier* m;
    {
        std::lock_guard<std::mutex> lock(emu::mbarrier_registry_mutex);
        emu::mbarrier_registry.push_back(std::make_unique<emu::Mbarrier>());
        m = emu::mbarrier_registry.back().get();
    }
    m->arrivals = m->pending = arrivals;
    std::memcpy(bar, &m, sizeof m);
}

inline void mbarrier_init_fence() {}

inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    emu::Mbarrier& m = emu::mbarrier_state(bar);
    std::lock_guard<std::mutex> lock(m.mutex);
    m.tx += bytes;
    emu::mbarrier_arrive_locked(bar, m);
    emu::mbarrier_complete_if_done(bar, m);
}

inline void mbarrier_arrive(uint64_t* bar) {
    emu::Mbarrier& m = emu::mbarrier_state(bar);
    std::lock_guard<std::mutex> lock(m.mutex);
    emu::mbarrier_arrive_locked(bar, m);
    emu::mbarrier_complete_if_done(bar, m);
}

// Returns once the phase of parity `phase` has completed: while the
// current (incomplete) phase has that parity, the one before it (of the
// other parity) counts as complete, so a fresh barrier passes parity 1.
inline void mbarrier_wait(uint64_t* bar, uint32_t phase) {
    emu::Mbarrier& m = emu::mbarrier_state(bar);
    std::unique_lock<std::mutex> lock(m.mutex);
    const bool done = m.changed.wait_for(lock, emu::kDeadlock,
                                         [&] { return (m.completed & 1) != (phase & 1); });
    if (!done) {
        emu::fail("deadlock: waiting for parity %u of mbarrier %p (%llu phases done, %u arrivals "
                  "and %lld bytes pending)",
                  phase, (const void*)bar, (unsigned long long)m.completed, m.pending,
                  (long long)m.tx);
    }
}

}  // namespace nvlm
