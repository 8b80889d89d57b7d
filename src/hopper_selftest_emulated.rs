//! The Hopper primitives' GPU self-tests (kernels/hopper_selftest.cu) run
//! on the host emulation, with the expectations the GPU tests use
//! (tests/common/hopper_selftests.rs): the kernels and those expectations
//! must agree with the emulation's reading of the PTX ISA here, so that a
//! failure of tests/gpu_hopper_primitives.rs on a GPU is the hardware
//! reading a primitive differently, not a wrong test. Every self-test runs
//! here: the TMA round trip (zero fill, clipped store), the 4-D TMA load,
//! multicast into a cluster's two CTAs with an arrival on the other's
//! barrier, the mbarrier pipeline, and wgmma from plain, swizzled and
//! register operands.

#[path = "../tests/common/hopper_selftests.rs"]
mod hopper_selftests;

use crate::abi::{
    NvlmClusterSelftest, NvlmPipelineSelftest, NvlmTma4dSelftest, NvlmTmaSelftest,
    NvlmWgmmaRsSelftest, NvlmWgmmaSelftest, NvlmWgmmaSwizzledSelftest,
};
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

/// One block of `threads` threads with `smem` bytes of dynamic shared memory.
fn one_block(threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
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
    let seed = host_emulation::fresh_seed("tma_4d_self_test_gives_the_expected_boxes");
    let (batch, tokens, heads) = (2, 130, 3);
    for head_dim in [64, 128] {
        for layout in hopper_selftests::layouts(batch, tokens, heads, head_dim) {
            let elements = random_bf16(seed.wrapping_add(head_dim as u64), layout.span().unwrap());
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
                    config: one_block(128, hopper_selftests::TMA_4D_SMEM),
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
    let seed = host_emulation::fresh_seed("wgmma_swizzled_self_test_gives_the_product");
    let (a, b) = (
        random_bf16(seed, 64 * 128),
        random_bf16(seed.wrapping_add(1), 64 * 128),
    );
    let mut memory = Memory::default();
    let (at_a, at_b) = (memory.put(&a), memory.put(&b));
    let at_c = memory.put(&vec![f32::NAN; 64 * 64]);
    let params = NvlmWgmmaSwizzledSelftest { c: at_c };
    let file = LaunchFile {
        kernel: "selftest_wgmma_swizzled",
        config: one_block(128, hopper_selftests::WGMMA_SWIZZLED_SMEM),
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
    let seed = host_emulation::fresh_seed("wgmma_register_a_self_test_gives_the_product");
    let (p, v) = (
        random_bf16(seed, 64 * 64),
        random_bf16(seed.wrapping_add(1), 64 * 128),
    );
    let mut memory = Memory::default();
    let (at_p, at_v) = (memory.put(&p), memory.put(&v));
    let at_c = memory.put(&vec![f32::NAN; 64 * 128]);
    let params = NvlmWgmmaRsSelftest { p: at_p, c: at_c };
    let file = LaunchFile {
        kernel: "selftest_wgmma_rs",
        config: one_block(128, hopper_selftests::WGMMA_RS_SMEM),
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

#[test]
fn cluster_self_test_multicasts_into_both_ctas() {
    let Some(exe) = emulator() else {
        return;
    };
    let (_, src_h, src_pitch) = hopper_selftests::ROUND_TRIP_SRC;
    let (box_w, box_h) = hopper_selftests::ROUND_TRIP_BOX;
    // Inside, and the second CTA's box past the bottom and left edges.
    let seed = host_emulation::fresh_seed("cluster_self_test_multicasts_into_both_ctas");
    for (i, load) in [(0, (8, 2)), (1, (-24, 50))] {
        let src = random_bf16(seed.wrapping_add(i), (src_pitch * src_h) as usize);
        let mut memory = Memory::default();
        let at_src = memory.put(&src);
        let out_len = (4 * box_w * box_h) as usize;
        let at_out = memory.put(&vec![hopper_selftests::POISON; out_len]);
        let params = hopper_selftests::cluster_params(at_out, load);
        let file = LaunchFile {
            kernel: "selftest_cluster_multicast",
            config: LaunchConfig {
                grid_dim: (2, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: hopper_selftests::CLUSTER_SMEM,
            },
            // SAFETY: abi.h's structs have no padding.
            params: unsafe { host_emulation::param_bytes(&params) },
            pointers: &[offset_of!(NvlmClusterSelftest, out)],
            maps: &[EmulatedTensorMap::of(&hopper_selftests::round_trip_matrix(
                at_src,
                hopper_selftests::ROUND_TRIP_SRC,
            ))],
            memory: &memory,
        }
        .bytes();
        let got: Vec<u16> = Memory::get(&host_emulation::run(&exe, &file), at_out, out_len);
        assert_eq!(
            hopper_selftests::first_difference(
                &got,
                &hopper_selftests::cluster_expected(&src, load)
            ),
            None,
            "load {load:?}"
        );
    }
}

/// The round trip's memory: a source of random values drawn from `seed`,
/// then the destination and the box copy, poisoned. Returns the source,
/// the memory and the three addresses.
fn round_trip_memory(seed: u64) -> (Vec<u16>, Memory, [u64; 3]) {
    let (_, src_h, src_pitch) = hopper_selftests::ROUND_TRIP_SRC;
    let (_, dst_h, dst_pitch) = hopper_selftests::ROUND_TRIP_DST;
    let (box_w, box_h) = hopper_selftests::ROUND_TRIP_BOX;
    let poison = hopper_selftests::POISON;
    let src = random_bf16(seed, (src_pitch * src_h) as usize);
    let mut memory = Memory::default();
    let addresses = [
        memory.put(&src),
        memory.put(&vec![poison; (dst_pitch * dst_h) as usize]),
        memory.put(&vec![poison; (box_w * box_h) as usize]),
    ];
    (src, memory, addresses)
}

/// The round trip's launch file: a box loaded at `load` from the source
/// and stored at `store` into the destination (addresses: source,
/// destination, box copy).
fn round_trip_file(
    memory: &Memory,
    [at_src, at_dst, at_box]: [u64; 3],
    load: (i32, i32),
    store: (i32, i32),
) -> Vec<u8> {
    let params = hopper_selftests::round_trip_params(at_box, load, store);
    LaunchFile {
        kernel: "selftest_tma_round_trip",
        config: one_block(128, hopper_selftests::ROUND_TRIP_SMEM),
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[offset_of!(NvlmTmaSelftest, box_out)],
        maps: &[
            EmulatedTensorMap::of(&hopper_selftests::round_trip_matrix(
                at_src,
                hopper_selftests::ROUND_TRIP_SRC,
            )),
            EmulatedTensorMap::of(&hopper_selftests::round_trip_matrix(
                at_dst,
                hopper_selftests::ROUND_TRIP_DST,
            )),
        ],
        memory,
    }
    .bytes()
}

#[test]
fn tma_round_trip_self_test_fills_with_zeros_and_clips() {
    let Some(exe) = emulator() else {
        return;
    };
    let (_, dst_h, dst_pitch) = hopper_selftests::ROUND_TRIP_DST;
    let (box_w, box_h) = hopper_selftests::ROUND_TRIP_BOX;
    // Inside, past every edge of the source, and stores clipped at the
    // destination's right and bottom edges.
    let seed = host_emulation::fresh_seed("tma_round_trip_self_test_fills_with_zeros_and_clips");
    for (i, load, store) in [
        (0, (0, 0), (0, 0)),
        (1, (-32, -16), (64, 39)),
        (2, (96, 69), (8, 20)),
        (3, (48, -3), (32, 0)),
    ] {
        let (src, memory, addresses) = round_trip_memory(seed.wrapping_add(i));
        let [_, at_dst, at_box] = addresses;
        let file = round_trip_file(&memory, addresses, load, store);
        let after = host_emulation::run(&exe, &file);
        let got_box: Vec<u16> = Memory::get(&after, at_box, (box_w * box_h) as usize);
        let got_dst: Vec<u16> = Memory::get(&after, at_dst, (dst_pitch * dst_h) as usize);
        let (want_box, want_dst) = hopper_selftests::round_trip_expected(&src, load, store);
        let what = format!("load {load:?} store {store:?}");
        assert_eq!(
            hopper_selftests::first_difference(&got_box, &want_box),
            None,
            "{what}: box"
        );
        assert_eq!(
            hopper_selftests::first_difference(&got_dst, &want_dst),
            None,
            "{what}: destination"
        );
    }
}

/// A TMA store's box may run past the tensor's far edges, not start before
/// its first element (the CUDA Programming Guide), and the emulation stops
/// one that does instead of dropping those elements.
#[test]
fn a_tma_store_at_a_negative_coordinate_fails_the_emulated_run() {
    let Some(exe) = emulator() else {
        return;
    };
    let (_, memory, addresses) = round_trip_memory(9);
    let file = round_trip_file(&memory, addresses, (0, 0), (-8, 0));
    host_emulation::assert_run_stops(&exe, &file, "a TMA store at (-8, 0): a negative coordinate");
}

/// A TMA box's innermost coordinate must be a multiple of 16 bytes (on an
/// H200 a load at x = 36 bf16 elements was an illegal instruction), and the
/// emulation stops a load or store that is not.
#[test]
fn a_tma_box_at_a_misaligned_inner_coordinate_fails_the_emulated_run() {
    let Some(exe) = emulator() else {
        return;
    };
    let (_, memory, addresses) = round_trip_memory(10);
    let load = round_trip_file(&memory, addresses, (36, 0), (0, 0));
    host_emulation::assert_run_stops(
        &exe,
        &load,
        "a TMA load at innermost coordinate 36: 72 bytes, not a multiple of 16",
    );
    let store = round_trip_file(&memory, addresses, (0, 0), (4, 0));
    host_emulation::assert_run_stops(
        &exe,
        &store,
        "a TMA store at innermost coordinate 4: 8 bytes, not a multiple of 16",
    );
}

#[test]
fn mbarrier_pipeline_self_test_streams_every_tile_once() {
    let Some(exe) = emulator() else {
        return;
    };
    let seed = host_emulation::fresh_seed("mbarrier_pipeline_self_test_streams_every_tile_once");
    // One tile, a partial one, exact stages, and many rounds of the ring.
    for rows in [1u32, 31, 32, 33, 64, 65, 300] {
        let matrix = random_bf16(seed.wrapping_add(u64::from(rows)), rows as usize * 64);
        let mut memory = Memory::default();
        let at_matrix = memory.put(&matrix);
        let at_out = memory.put(&[f32::NAN; 128]);
        let params = NvlmPipelineSelftest {
            out: at_out,
            rows,
            reserved: 0,
        };
        let file = LaunchFile {
            kernel: "selftest_mbarrier_pipeline",
            config: one_block(
                hopper_selftests::PIPELINE_THREADS,
                hopper_selftests::PIPELINE_SMEM,
            ),
            // SAFETY: abi.h's structs have no padding.
            params: unsafe { host_emulation::param_bytes(&params) },
            pointers: &[offset_of!(NvlmPipelineSelftest, out)],
            maps: &[EmulatedTensorMap::of(&Tiled2d::matrix(
                at_matrix,
                TmaElement::Bf16,
                (64, rows.into(), 128),
                (64, hopper_selftests::PIPELINE_TILE_ROWS),
                TmaSwizzle::None,
            ))],
            memory: &memory,
        }
        .bytes();
        let got: Vec<f32> = Memory::get(&host_emulation::run(&exe, &file), at_out, 128);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let want = hopper_selftests::column_sums(&matrix, rows as usize);
        assert_eq!(
            hopper_selftests::first_difference(&bits(&got), &bits(&want)),
            None,
            "rows {rows}"
        );
    }
}

#[test]
fn wgmma_tile_self_test_gives_the_product() {
    let Some(exe) = emulator() else {
        return;
    };
    let seed = host_emulation::fresh_seed("wgmma_tile_self_test_gives_the_product");
    let (a, b) = (
        random_bf16(seed, 64 * 64),
        random_bf16(seed.wrapping_add(1), 64 * 64),
    );
    let mut memory = Memory::default();
    let (at_a, at_b) = (memory.put(&a), memory.put(&b));
    let at_c = memory.put(&vec![f32::NAN; 64 * 64]);
    let params = NvlmWgmmaSelftest {
        a: at_a,
        b: at_b,
        c: at_c,
    };
    let file = LaunchFile {
        kernel: "selftest_wgmma_tile",
        config: one_block(128, hopper_selftests::WGMMA_TILE_SMEM),
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[
            offset_of!(NvlmWgmmaSelftest, a),
            offset_of!(NvlmWgmmaSelftest, b),
            offset_of!(NvlmWgmmaSelftest, c),
        ],
        maps: &[],
        memory: &memory,
    }
    .bytes();
    let c: Vec<f32> = Memory::get(&host_emulation::run(&exe, &file), at_c, 64 * 64);
    let rel = hopper_selftests::tile_product_error(&a, &b, &c);
    assert!(
        rel < hopper_selftests::PRODUCT_TOLERANCE,
        "relative error {rel:e}"
    );
}
