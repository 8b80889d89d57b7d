// Host emulation of kernels/common/cluster.cuh: the CTAs of a cluster run
// together (launch.h), each with its own shared memory, which the same
// shared address names in each.
#pragma once
#include "common/mbarrier.cuh"

// The cluster shape is the driver's to state (emu::in_clusters_of).
#define NVLM_CLUSTER_DIMS(x, y, z)

namespace nvlm {

inline uint32_t cluster_ctarank() { return emu::cta_rank; }

inline void cluster_sync() { emu::cluster_barrier->wait("cluster_sync", emu::publish_cluster); }

inline void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta, bool arrive) {
    uint64_t* remote = reinterpret_cast<uint64_t*>(emu::shared_bytes_of(cta, emu::shared_address(bar), 8));
    if (arrive) mbarrier_arrive(remote);
}

}  // namespace nvlm
