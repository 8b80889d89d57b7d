// Runs selftest_tma_4d of kernels/hopper_selftest.cu on the CPU, over the
// emulated runtime and TMA (tests/host_emulation/cuda): the check that the
// GPU self-test's expected bytes (tests/common/tma_box.rs) and the kernel
// agree with the emulation's reading of a 4-D, 128-byte swizzled load. The
// file's other self-tests are not run here: they check the hardware's
// reading of the primitives, which the emulation cannot.
//
//   hopper_selftest_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "hopper_selftest.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv, {{"selftest_tma_4d", emu::kernel(selftest_tma_4d)}});
}
