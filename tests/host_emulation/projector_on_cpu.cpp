// Runs kernels/projector.cu on the CPU: the pixel-shuffle + LayerNorm front
// and the bias + GELU kernels' own source over the emulated CUDA runtime
// (tests/host_emulation/cuda: one std::thread per CUDA thread, blocks one
// after another), under the address or thread sanitizer.
//
//   projector_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "projector.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv,
                           {
                               EMU_KERNEL(projector_front_bf16_v8x1),
                               EMU_KERNEL(projector_front_bf16_v8x2),
                               EMU_KERNEL(projector_front_bf16_v8x4),
                               EMU_KERNEL(projector_front_bf16_v8x8),
                               EMU_KERNEL(projector_front_bf16_s1x8),
                               EMU_KERNEL(projector_front_f16_v8x1),
                               EMU_KERNEL(projector_front_f16_v8x2),
                               EMU_KERNEL(projector_front_f16_v8x4),
                               EMU_KERNEL(projector_front_f16_v8x8),
                               EMU_KERNEL(projector_front_f16_s1x8),
                               EMU_KERNEL(bias_gelu_bf16_v8),
                               EMU_KERNEL(bias_gelu_bf16_s1),
                               EMU_KERNEL(bias_gelu_f16_v8),
                               EMU_KERNEL(bias_gelu_f16_s1),
                           });
}
