// Thread block clusters (sm_90): the CTAs of a cluster run at the same
// time on one GPC and reach each other's shared memory, so one CTA's TMA
// load can land in several CTAs (multicast, common/tma.cuh) and a CTA can
// arrive on a peer's mbarrier.
#pragma once
#include "common/ptx.cuh"

// A kernel's compiled-in cluster shape, where the target has clusters
// (sm_90 on, and the host pass); elsewhere nothing, as those targets'
// entries only trap.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define NVLM_CLUSTER_DIMS(x, y, z) __cluster_dims__(x, y, z)
#else
#define NVLM_CLUSTER_DIMS(x, y, z)
#endif

#if __CUDA_ARCH__ >= 900
namespace nvlm {

// This CTA's index in its cluster.
__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}

// Every thread of every CTA of the cluster meets here. Release/acquire:
// shared-memory writes before it (mbarrier inits) are visible to the peers
// after it. Needed before a peer's first access to this CTA's shared
// memory, and before exiting while a peer may still access it.
// Not .aligned: a warp may reach it diverged (a producer warp whose one
// thread ran the loads).
__device__ __forceinline__ void cluster_sync() {
    asm volatile(
        "barrier.cluster.arrive.release;\n"
        "barrier.cluster.wait.acquire;" ::: "memory");
}

// One arrival on the mbarrier at `bar`'s shared-memory offset in CTA `cta`
// of the cluster (this CTA's own when `cta` is its rank), by the threads
// whose `arrive` is true. A predicate, not a branch, so that a warp that
// arrives from one lane stays converged for the wgmmas around it. The
// default semantics (release at CTA scope), as CUTLASS's consumer release:
// what it signals is that wgmma reads of a stage are done, which the
// wgmma wait already ensured; `.release.cluster` cost a MEMBAR.ALL.GPU
// before every arrival in SASS.
__device__ __forceinline__ void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta, bool arrive) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        ".reg .b32 remote;\n"
        "setp.ne.b32 p, %2, 0;\n"
        "mapa.shared::cluster.u32 remote, %0, %1;\n"
        "@p mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
        "}" ::"r"(smem_addr(bar)),
        "r"(cta), "r"(static_cast<uint32_t>(arrive))
        : "memory");
}

}  // namespace nvlm
#endif
