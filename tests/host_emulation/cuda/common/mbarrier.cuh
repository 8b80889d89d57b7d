// Host emulation of kernels/common/mbarrier.cuh: a phase completes when its
// pending arrivals and its transaction bytes both reach zero; waiters wait
// for the parity of a phase, as the hardware's try_wait.parity.
#pragma once
#include "common/ptx.cuh"
#include <map>

namespace emu {

struct Mbarrier {
    uint32_t arrivals = 0;  // per phase, from init
    uint32_t pending = 0;
    int64_t tx = 0;           // bytes announced minus bytes arrived
    uint64_t completed = 0;   // phases completed
};

inline std::mutex mbarrier_mutex;
inline std::condition_variable mbarrier_changed;
inline std::map<const uint64_t*, Mbarrier> mbarriers;

inline Mbarrier& mbarrier_state(const uint64_t* bar) {
    auto it = mbarriers.find(bar);
    if (it == mbarriers.end()) fail("mbarrier %p used before mbarrier_init", (const void*)bar);
    return it->second;
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
        mbarrier_changed.notify_all();
    }
}

// TMA's complete_tx: `bytes` arrived for the barrier's current phase.
inline void mbarrier_complete_tx(uint64_t* bar, uint32_t bytes) {
    std::lock_guard<std::mutex> lock(mbarrier_mutex);
    Mbarrier& m = mbarrier_state(bar);
    m.tx -= bytes;
    mbarrier_complete_if_done(bar, m);
}

}  // namespace emu

namespace nvlm {

inline void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    if (arrivals == 0 || arrivals >= (1u << 20)) emu::fail("mbarrier_init with %u arrivals", arrivals);
    std::lock_guard<std::mutex> lock(emu::mbarrier_mutex);
    emu::Mbarrier& m = emu::mbarriers[bar];
    m = emu::Mbarrier{};
    m.arrivals = m.pending = arrivals;
}

inline void mbarrier_init_fence() {}

inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    std::lock_guard<std::mutex> lock(emu::mbarrier_mutex);
    emu::Mbarrier& m = emu::mbarrier_state(bar);
    m.tx += bytes;
    emu::mbarrier_arrive_locked(bar, m);
    emu::mbarrier_complete_if_done(bar, m);
}

inline void mbarrier_arrive(uint64_t* bar) {
    std::lock_guard<std::mutex> lock(emu::mbarrier_mutex);
    emu::Mbarrier& m = emu::mbarrier_state(bar);
    emu::mbarrier_arrive_locked(bar, m);
    emu::mbarrier_complete_if_done(bar, m);
}

// Returns once the phase of parity `phase` has completed: while the
// current (incomplete) phase has that parity, the one before it (of the
// other parity) counts as complete, so a fresh barrier passes parity 1.
inline void mbarrier_wait(uint64_t* bar, uint32_t phase) {
    std::unique_lock<std::mutex> lock(emu::mbarrier_mutex);
    const bool done = emu::mbarrier_changed.wait_for(lock, emu::kDeadlock, [&] {
        return (emu::mbarrier_state(bar).completed & 1) != (phase & 1);
    });
    if (!done) {
        const emu::Mbarrier& m = emu::mbarrier_state(bar);
        emu::fail("deadlock: waiting for parity %u of mbarrier %p (%llu phases done, %u arrivals "
                  "and %lld bytes pending)",
                  phase, (const void*)bar, (unsigned long long)m.completed, m.pending,
                  (long long)m.tx);
    }
}

}  // namespace nvlm
