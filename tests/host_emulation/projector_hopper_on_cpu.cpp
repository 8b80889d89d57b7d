// Runs kernels/projector_hopper.cu on the CPU: the kernel's own source over
// the emulated CUDA runtime and Hopper primitives (tests/host_emulation/
// cuda), the two CTAs of each cluster together (768 std::threads), so that
// the multicast loads, the releases to both CTAs' barriers and the cluster
// barriers run as the kernel orders them.
//
//   projector_hopper_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "projector_hopper.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(
        argc, argv,
        {
            EMU_CLUSTER_KERNEL(NVLM_HOPPER_LINEAR_CLUSTER_M, linear_hopper_n256_bf16),
            EMU_CLUSTER_KERNEL(NVLM_HOPPER_LINEAR_CLUSTER_M, linear_hopper_n256_f16),
            EMU_CLUSTER_KERNEL(NVLM_HOPPER_LINEAR_CLUSTER_M, linear_hopper_n224_bf16),
            EMU_CLUSTER_KERNEL(NVLM_HOPPER_LINEAR_CLUSTER_M, linear_hopper_n224_f16),
        });
}
