// Runs kernels/attention.cu on the CPU: the portable flash attention and
// qk-RMSNorm kernels' own source over the emulated CUDA runtime and
// warp-level primitives (tests/host_emulation/cuda: cp.async, ldmatrix,
// mma.sync; 256 std::threads per block, blocks one after another), under
// the address or thread sanitizer.
//
//   attention_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "attention.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv,
                           {
                               EMU_KERNEL(flash_attention_bf16_d64),
                               EMU_KERNEL(flash_attention_bf16_d128),
                               EMU_KERNEL(flash_attention_f16_d64),
                               EMU_KERNEL(flash_attention_f16_d128),
                               EMU_KERNEL(qk_rms_norm_bf16),
                               EMU_KERNEL(qk_rms_norm_f16),
                           });
}
