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
                               EMU_KERNEL(selftest_tma_round_trip),
                               EMU_CLUSTER_KERNEL(2, selftest_cluster_multicast),
                               EMU_KERNEL(selftest_mbarrier_pipeline),
                               EMU_KERNEL(selftest_wgmma_tile),
                               EMU_KERNEL(selftest_tma_4d),
                               EMU_KERNEL(selftest_wgmma_swizzled),
                               EMU_KERNEL(selftest_wgmma_rs),
                           });
}
