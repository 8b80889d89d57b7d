// Runs the self-tests of kernels/hopper_selftest.cu on the CPU, over the
// emulated runtime, TMA, mbarrier and wgmma (tests/host_emulation/cuda):
// the check that the GPU tests' expectations (tests/common/hopper_selftests.rs)
// and the kernels agree with the emulation's reading of the PTX ISA, which
// only the GPU can confirm.
//
//   hopper_selftest_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "hopper_selftest.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv,
                           {
                               {"selftest_tma_round_trip", emu::kernel(selftest_tma_round_trip)},
                               {"selftest_cluster_multicast",
                                emu::in_clusters_of(2, emu::kernel(selftest_cluster_multicast))},
                               {"selftest_mbarrier_pipeline",
                                emu::kernel(selftest_mbarrier_pipeline)},
                               {"selftest_wgmma_tile", emu::kernel(selftest_wgmma_tile)},
                               {"selftest_tma_4d", emu::kernel(selftest_tma_4d)},
                               {"selftest_wgmma_swizzled", emu::kernel(selftest_wgmma_swizzled)},
                               {"selftest_wgmma_rs", emu::kernel(selftest_wgmma_rs)},
                           });
}
