// Runs kernels/preprocess.cu's `preprocess_fused` (v2), `preprocess_staged`
// (v3) and `preprocess_staged_dp4a` (v4) on the CPU: the kernels' own source over the
// emulated CUDA runtime (tests/host_emulation/cuda: 256 std::threads per
// block, __syncthreads a barrier, blocks one after another). With no GPU in
// reach this executes the kernels' indexing, chunking and barriers (a
// deadlock means a barrier some threads skip); under the address sanitizer
// it also catches reads and writes outside the image, tables, output and
// dynamic shared memory, under the thread sanitizer shared-memory accesses
// the barriers do not order.
//
//   preprocess_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "preprocess.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv,
                           {
                               {"preprocess_fused", emu::kernel(preprocess_fused)},
                               {"preprocess_staged", emu::kernel(preprocess_staged)},
                               {"preprocess_staged_dp4a", emu::kernel(preprocess_staged_dp4a)},
                           });
}
