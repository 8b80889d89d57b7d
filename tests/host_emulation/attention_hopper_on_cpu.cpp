// Runs kernels/attention_hopper.cu on the CPU: the kernel's own source over
// the emulated CUDA runtime and Hopper primitives (tests/host_emulation/
// cuda: 384 std::threads per block, blocks one after another). With no GPU
// in reach this executes the kernel's pipeline (mbarrier phases, expected
// bytes, stage reuse), its shared-memory and descriptor arithmetic, tails
// and output indexing; built with -fsanitize=address it also catches
// out-of-bounds accesses on the host side of the emulation, and with
// -fsanitize=thread, accesses the pipeline does not order.
//
//   attention_hopper_on_cpu LAUNCH_FILE OUT_FILE   (format: cuda/launch.h)
#include "emulation.h"
#include "attention_hopper.cu"
#include "launch.h"

int main(int argc, char** argv) {
    return emu::run_launch(argc, argv,
                           {
                               EMU_KERNEL(attention_hopper_d128_bf16),
                               EMU_KERNEL(attention_hopper_d128_f16),
                               EMU_KERNEL(attention_hopper_d64_bf16),
                               EMU_KERNEL(attention_hopper_d64_f16),
                               EMU_KERNEL(attention_hopper_serial_d128_bf16),
                               EMU_KERNEL(attention_hopper_serial_d128_f16),
                               EMU_KERNEL(attention_hopper_serial_d64_bf16),
                               EMU_KERNEL(attention_hopper_serial_d64_f16),
                               EMU_KERNEL(attention_hopper_pingpong_d128_bf16),
                               EMU_KERNEL(attention_hopper_pingpong_d128_f16),
                               EMU_KERNEL(attention_hopper_pingpong_d64_bf16),
                               EMU_KERNEL(attention_hopper_pingpong_d64_f16),
                               EMU_KERNEL(attention_hopper_persistent_d128_bf16),
                               EMU_KERNEL(attention_hopper_persistent_d128_f16),
                               EMU_KERNEL(attention_hopper_persistent_d64_bf16),
                               EMU_KERNEL(attention_hopper_persistent_d64_f16),
                           });
}
