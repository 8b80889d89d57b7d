// Runs kernels/preprocess.cu on the CPU: v1's `resample_to_intermediate`
// and `resample_to_tiles` (32x8 threads per block), `preprocess_fused`
// (v2), `preprocess_staged` (v3) and `preprocess_staged_dp4a` (v4) (256
// threads per block, __syncthreads a barrier); the kernels' own source
// over the emulated CUDA runtime (tests/host_emulation/cuda: one
// std::thread per CUDA thread, blocks one after another). With no GPU in
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
                               EMU_KERNEL(resample_to_intermediate),
                               EMU_KERNEL(resample_to_tiles),
                               EMU_KERNEL(preprocess_fused),
                               EMU_KERNEL(preprocess_staged),
                               EMU_KERNEL(preprocess_staged_dp4a),
                           });
}
