//! The Hopper primitives' GPU self-tests (kernels/hopper_selftest.cu) run
//! on the host emulation, with the expectations the GPU tests use
//! (tests/common/hopper_selftests.rs): the kernels and those expectations
//! must agree with the emulation's reading of the PTX ISA here, so that a
//! failure of tests/gpu_hopper_primitives.rs on a GPU is the hardware
//! reading a primitive differently, not a wrong test. Only the self-tests
//! that use dynamic shared memory run here (4-D TMA, swizzled and
//! register-A wgmma); the others check what only the hardware can.

#[path = "../tests/common/hopper_selftests.rs"]
mod hopper_selftests;

use crate::abi::{NvlmTma4dSelftest, NvlmWgmmaRsSelftest, NvlmWgmmaSwizzledSelftest};
use crate::attention::hopper_input_tensor;
use crate::attention::tests::Rng;
use crate::hopper::{Tiled2d, TmaElement, TmaSwizzle};
use crate::host_emulation::{self, EmulatedTensorMap, LaunchFile, Memory};
use cudarc::driver::LaunchConfig;
use half::bf16;
use std::mem::offset_of;
use std::path::PathBuf;

fn emulator() -> Option<PathBuf> {
    host_emulation::emulator("hopper_selftest_on_cpu", "address")
}

/// One block of 128 threads with `smem` bytes of dynamic shared memory.
fn one_block(smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// `n` bf16 values (as bits) in [-1, 1), drawn from `seed`.
fn random_bf16(seed: u64, n: usize) -> Vec<u16> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| bf16::from_f32(rng.unit()).to_bits())
        .collect()
}

/// A row-major bf16 matrix in 64x64 boxes with the 128-byte swizzle, as
/// the GPU test maps it.
fn swizzled_matrix(address: u64, rows: u64, cols: u64) -> EmulatedTensorMap {
    EmulatedTensorMap::of(&Tiled2d::matrix(
        address,
        TmaElement::Bf16,
        (cols, rows, cols * 2),
        (64, 64),
        TmaSwizzle::B128,
    ))
}

#[test]
fn tma_4d_self_test_gives_the_expected_boxes() {
    let Some(exe) = emulator() else {
        return;
    };
    let (batch, tokens, heads) = (2, 130, 3);
    for head_dim in [64, 128] {
        for layout in hopper_selftests::layouts(batch, tokens, heads, head_dim) {
            let elements = random_bf16(head_dim as u64, layout.span().unwrap());
            for token0 in [0, 128] {
                let mut memory = Memory::default();
                let at_elements = memory.put(&elements);
                let out = memory.put(&[0xFFu8; hopper_selftests::BOX_BYTES]);
                let (tensor, tokens_inner) =
                    hopper_input_tensor::<bf16>(at_elements, &layout, 128).unwrap();
                let d0 = if head_dim == 128 { 64 } else { 0 };
                let at = (d0, token0, heads - 1, batch - 1);
                let (coords, want) =
                    hopper_selftests::expected_box(&elements, &layout, tokens_inner == 1, at);
                let params = NvlmTma4dSelftest { out, coords };
                let file = LaunchFile {
                    kernel: "selftest_tma_4d",
                    config: one_block(hopper_selftests::BOX_BYTES + 1024),
                    // SAFETY: abi.h's structs have no padding.
                    params: unsafe { host_emulation::param_bytes(&params) },
                    pointers: &[offset_of!(NvlmTma4dSelftest, out)],
                    maps: &[EmulatedTensorMap::of(&tensor)],
                    memory: &memory,
                }
                .bytes();
                let got: Vec<u8> = Memory::get(
                    &host_emulation::run(&exe, &file),
                    out,
                    hopper_selftests::BOX_BYTES,
                );
                assert!(got == want, "{layout:?} box {at:?}");
            }
        }
    }
}

#[test]
fn wgmma_swizzled_self_test_gives_the_product() {
    let Some(exe) = emulator() else {
        return;
    };
    let (a, b) = (random_bf16(1, 64 * 128), random_bf16(2, 64 * 128));
    let mut memory = Memory::default();
    let (at_a, at_b) = (memory.put(&a), memory.put(&b));
    let at_c = memory.put(&vec![f32::NAN; 64 * 64]);
    let params = NvlmWgmmaSwizzledSelftest { c: at_c };
    let file = LaunchFile {
        kernel: "selftest_wgmma_swizzled",
        config: one_block(4 * 8192 + 1024),
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[offset_of!(NvlmWgmmaSwizzledSelftest, c)],
        maps: &[
            swizzled_matrix(at_a, 64, 128),
            swizzled_matrix(at_b, 64, 128),
        ],
        memory: &memory,
    }
    .bytes();
    let c: Vec<f32> = Memory::get(&host_emulation::run(&exe, &file), at_c, 64 * 64);
    let rel = hopper_selftests::swizzled_product_error(&a, &b, &c);
    assert!(
        rel < hopper_selftests::PRODUCT_TOLERANCE,
        "relative error {rel:e}"
    );
}

#[test]
fn wgmma_register_a_self_test_gives_the_product() {
    let Some(exe) = emulator() else {
        return;
    };
    let (p, v) = (random_bf16(3, 64 * 64), random_bf16(4, 64 * 128));
    let mut memory = Memory::default();
    let (at_p, at_v) = (memory.put(&p), memory.put(&v));
    let at_c = memory.put(&vec![f32::NAN; 64 * 128]);
    let params = NvlmWgmmaRsSelftest { p: at_p, c: at_c };
    let file = LaunchFile {
        kernel: "selftest_wgmma_rs",
        config: one_block(2 * 8192 + 1024),
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[
            offset_of!(NvlmWgmmaRsSelftest, p),
            offset_of!(NvlmWgmmaRsSelftest, c),
        ],
        maps: &[swizzled_matrix(at_v, 64, 128)],
        memory: &memory,
    }
    .bytes();
    let c: Vec<f32> = Memory::get(&host_emulation::run(&exe, &file), at_c, 64 * 128);
    let rel = hopper_selftests::register_a_product_error(&p, &v, &c);
    assert!(
        rel < hopper_selftests::PRODUCT_TOLERANCE,
        "relative error {rel:e}"
    );
}
