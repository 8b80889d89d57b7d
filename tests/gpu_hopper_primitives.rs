//! The Hopper primitives of kernels/common/ (TMA, mbarrier pipelines,
//! clusters, wgmma), each alone in a small kernel (kernels/hopper_selftest.cu),
//! checked exactly against the CPU. Without a usable GPU these skip (see
//! tests/common/gpu.rs); on a GPU other than compute capability 9.0 they
//! skip too, since sm_90a code runs nowhere else.

mod common;

use common::gpu::hopper_or_skip;
use common::{Rng, hopper_selftests};
use cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;
use nvlm_vision::abi::{NvlmPipelineSelftest, NvlmTma4dSelftest, NvlmWgmmaSelftest};
use nvlm_vision::attention::hopper_input_tensor;
use nvlm_vision::cuda::{Gpu, KernelModule};
use nvlm_vision::hopper::{TensorMap, Tiled2d, TmaElement, TmaSwizzle};

/// The self-test kernel `name` and a one-block launch of `threads`
/// threads with `smem` bytes of dynamic shared memory.
fn one_block(gpu: &Gpu, name: &str, threads: u32, smem: u32) -> (CudaFunction, LaunchConfig) {
    let f = gpu.function(KernelModule::HopperSelftest, name).unwrap();
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    };
    (f, cfg)
}

fn random_bf16(rng: &mut Rng, n: usize) -> Vec<u16> {
    // Values in [-2, 2): exactly representable sums stay far from overflow.
    (0..n)
        .map(|_| bf16::from_f32((rng.next_u64() % 4096) as f32 / 1024.0 - 2.0).to_bits())
        .collect()
}

fn signed_in(rng: &mut Rng, lo: i32, hi: i32) -> i32 {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32
}

/// A bf16 box's innermost coordinate in `lo..=hi`, on a 16-byte boundary as
/// TMA requires (on an H200, x = 36 was an illegal instruction).
fn inner_coordinate(rng: &mut Rng, lo: i32, hi: i32) -> i32 {
    8 * signed_in(
        rng,
        lo.div_euclid(8) + i32::from(lo % 8 != 0),
        hi.div_euclid(8),
    )
}

#[test]
fn tma_load_fills_outside_with_zeros_and_store_clips() {
    let Some(gpu) = hopper_or_skip("tma_load_fills_outside_with_zeros_and_store_clips") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("tma_round_trip");
    let stream = gpu.stream();
    let (_, src_h, src_pitch) = hopper_selftests::ROUND_TRIP_SRC;
    let (_, dst_h, dst_pitch) = hopper_selftests::ROUND_TRIP_DST;
    let (box_w, box_h) = hopper_selftests::ROUND_TRIP_BOX;
    for _ in 0..8 {
        let src_host = random_bf16(&mut rng, (src_pitch * src_h) as usize);
        let poison = hopper_selftests::POISON;
        let src = stream.clone_htod(&src_host).unwrap();
        let dst = stream
            .clone_htod(&vec![poison; (dst_pitch * dst_h) as usize])
            .unwrap();
        let box_out = stream
            .clone_htod(&vec![poison; (box_w * box_h) as usize])
            .unwrap();
        let load = (
            inner_coordinate(&mut rng, -32, 99),
            signed_in(&mut rng, -16, 69),
        );
        let store = (
            inner_coordinate(&mut rng, 0, 71),
            signed_in(&mut rng, 0, 39),
        );

        let (src_addr, _g1) = src.device_ptr(stream);
        let (dst_addr, _g2) = dst.device_ptr(stream);
        let src_map = TensorMap::tiled(
            &gpu,
            &hopper_selftests::round_trip_matrix(src_addr, hopper_selftests::ROUND_TRIP_SRC),
        )
        .unwrap();
        let dst_map = TensorMap::tiled(
            &gpu,
            &hopper_selftests::round_trip_matrix(dst_addr, hopper_selftests::ROUND_TRIP_DST),
        )
        .unwrap();
        let (box_addr, _g3) = box_out.device_ptr(stream);
        let params = hopper_selftests::round_trip_params(box_addr, load, store);
        drop((_g1, _g2, _g3));
        let (f, cfg) = one_block(
            &gpu,
            "selftest_tma_round_trip",
            128,
            hopper_selftests::ROUND_TRIP_SMEM,
        );
        // SAFETY: the maps describe the live `src`/`dst` buffers; box_out
        // holds box_w * box_h elements.
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&src_map)
                .arg(&dst_map)
                .arg(&params)
                .launch(cfg)
        }
        .unwrap();
        let got_box = stream.clone_dtoh(&box_out).unwrap();
        let got_dst = stream.clone_dtoh(&dst).unwrap();
        let (want_box, want_dst) = hopper_selftests::round_trip_expected(&src_host, load, store);
        let what = format!("load {load:?} store {store:?}");
        if let Some((i, got, want)) = hopper_selftests::first_difference(&got_box, &want_box) {
            panic!("{what}: box element {i}: got {got:#06x}, want {want:#06x}");
        }
        if let Some((i, got, want)) = hopper_selftests::first_difference(&got_dst, &want_dst) {
            panic!("{what}: destination element {i}: got {got:#06x}, want {want:#06x}");
        }
    }
}

/// Two CTAs of a cluster, each multicasting one box into both and arriving
/// on the other's barrier: both CTAs' tiles must hold both boxes.
#[test]
fn cluster_multicast_reaches_both_ctas() {
    let Some(gpu) = hopper_or_skip("cluster_multicast_reaches_both_ctas") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("cluster_multicast");
    let stream = gpu.stream();
    let (_, src_h, src_pitch) = hopper_selftests::ROUND_TRIP_SRC;
    let (box_w, box_h) = hopper_selftests::ROUND_TRIP_BOX;
    // Inside, ending at the bottom edge, past the far edges, before the
    // near edges (CTA 0's box wholly outside), then random: a fault names
    // its load.
    let fixed = [(0, 0), (32, 6), (56, 50), (-32, -40)];
    let random: Vec<_> = (0..4)
        .map(|_| {
            (
                inner_coordinate(&mut rng, -32, 99),
                signed_in(&mut rng, -40, 69),
            )
        })
        .collect();
    for load in fixed.into_iter().chain(random) {
        eprintln!("cluster_multicast: load {load:?}");
        let src_host = random_bf16(&mut rng, (src_pitch * src_h) as usize);
        let src = stream.clone_htod(&src_host).unwrap();
        let out_len = (4 * box_w * box_h) as usize;
        let out = stream
            .clone_htod(&vec![hopper_selftests::POISON; out_len])
            .unwrap();
        let (src_addr, _g1) = src.device_ptr(stream);
        let (out_addr, _g2) = out.device_ptr(stream);
        let map = TensorMap::tiled(
            &gpu,
            &hopper_selftests::round_trip_matrix(src_addr, hopper_selftests::ROUND_TRIP_SRC),
        )
        .unwrap();
        let params = hopper_selftests::cluster_params(out_addr, load);
        drop((_g1, _g2));
        let (f, mut cfg) = one_block(
            &gpu,
            "selftest_cluster_multicast",
            128,
            hopper_selftests::CLUSTER_SMEM,
        );
        // One cluster: the kernel's compiled-in shape is 2 x 1 x 1.
        cfg.grid_dim = (2, 1, 1);
        // SAFETY: the map describes the live `src`; out holds both tiles.
        unsafe { stream.launch_builder(&f).arg(&map).arg(&params).launch(cfg) }.unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        let want = hopper_selftests::cluster_expected(&src_host, load);
        if let Some((i, got, want)) = hopper_selftests::first_difference(&got, &want) {
            panic!("load {load:?}: element {i}: got {got:#06x}, want {want:#06x}");
        }
    }
}

/// The attention kernel's own tensor maps (`hopper_input_tensor`) for
/// packed qkv, `[B, N, H, D]` and `[B, H, N, D]` inputs, one box each
/// loaded by `selftest_tma_4d`: the bytes in shared memory must be the
/// tokens' rows, 128-byte swizzled, with zeros past the last token.
#[test]
fn tma_4d_boxes_of_the_attention_maps_land_swizzled_with_zero_fill() {
    let Some(gpu) =
        hopper_or_skip("tma_4d_boxes_of_the_attention_maps_land_swizzled_with_zero_fill")
    else {
        return;
    };
    let mut rng = Rng::from_env_or_time("tma_4d");
    let stream = gpu.stream();
    let (batch, tokens, heads) = (2, 130, 3);
    for head_dim in [64, 128] {
        for layout in hopper_selftests::layouts(batch, tokens, heads, head_dim) {
            let host = random_bf16(&mut rng, layout.span().unwrap());
            let elements = stream.clone_htod(&host).unwrap();
            let poison = vec![0xFFu8; hopper_selftests::BOX_BYTES];
            let mut out = stream.clone_htod(&poison).unwrap();
            let (addr, g) = elements.device_ptr(stream);
            let (tensor, tokens_inner) = hopper_input_tensor::<bf16>(addr, &layout, 128).unwrap();
            drop(g);
            let map = TensorMap::tiled(&gpu, &tensor).unwrap();
            // The second token box holds 2 real rows and 126 of zero fill.
            for token0 in [0, 128] {
                let d0 = 64 * rng.range(0, head_dim as u32 / 64 - 1) as usize;
                let at = (
                    d0,
                    token0,
                    rng.range(0, 2) as usize,
                    rng.range(0, 1) as usize,
                );
                let (coords, want) =
                    hopper_selftests::expected_box(&host, &layout, tokens_inner == 1, at);
                // Poisoned before each box, so bytes one launch leaves
                // unwritten cannot keep the previous box's values.
                stream.memcpy_htod(&poison, &mut out).unwrap();
                let (out_addr, g) = out.device_ptr(stream);
                let params = NvlmTma4dSelftest {
                    out: out_addr,
                    coords,
                };
                drop(g);
                let (f, cfg) =
                    one_block(&gpu, "selftest_tma_4d", 128, hopper_selftests::TMA_4D_SMEM);
                // SAFETY: the map describes the live `elements`; out holds
                // one box.
                unsafe { stream.launch_builder(&f).arg(&map).arg(&params).launch(cfg) }.unwrap();
                let got = stream.clone_dtoh(&out).unwrap();
                if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "{layout:?} box (d0, token0, head, batch) = {at:?}: first wrong byte {i} \
                         (row {}, 16-byte chunk {}): got {:#04x}, want {:#04x}",
                        i / 128,
                        i % 128 / 16,
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn mbarrier_pipeline_streams_every_tile_once() {
    let Some(gpu) = hopper_or_skip("mbarrier_pipeline_streams_every_tile_once") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("mbarrier_pipeline");
    let stream = gpu.stream();
    let mut sizes = vec![1u32, 31, 32, 33, 64, 65];
    sizes.extend((0..4).map(|_| rng.range(100, 3000)));
    for rows in sizes {
        let host = random_bf16(&mut rng, rows as usize * 64);
        let matrix = stream.clone_htod(&host).unwrap();
        let out = stream.clone_htod(&vec![f32::NAN; 128]).unwrap();
        let (addr, g) = matrix.device_ptr(stream);
        let map = TensorMap::tiled(
            &gpu,
            &Tiled2d::matrix(
                addr,
                TmaElement::Bf16,
                (64, rows.into(), 128),
                (64, hopper_selftests::PIPELINE_TILE_ROWS),
                TmaSwizzle::None,
            ),
        )
        .unwrap();
        drop(g);
        let (out_addr, g) = out.device_ptr(stream);
        let params = NvlmPipelineSelftest {
            out: out_addr,
            rows,
            reserved: 0,
        };
        drop(g);
        let (f, cfg) = one_block(
            &gpu,
            "selftest_mbarrier_pipeline",
            hopper_selftests::PIPELINE_THREADS,
            hopper_selftests::PIPELINE_SMEM,
        );
        // SAFETY: the map describes the live `matrix`; out holds 128 f32.
        unsafe { stream.launch_builder(&f).arg(&map).arg(&params).launch(cfg) }.unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        let want = hopper_selftests::column_sums(&host, rows as usize);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if let Some((i, got, want)) = hopper_selftests::first_difference(&bits(&got), &bits(&want))
        {
            let what = if i < 64 { "sum" } else { "sum of squares" };
            panic!(
                "rows {rows}: {what} of column {}: got {}, want {}",
                i % 64,
                f32::from_bits(got),
                f32::from_bits(want)
            );
        }
    }
}

#[test]
fn wgmma_tile_matches_the_cpu_product() {
    let Some(gpu) = hopper_or_skip("wgmma_tile_matches_the_cpu_product") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("wgmma_tile");
    let stream = gpu.stream();
    for _ in 0..4 {
        let a_host = random_bf16(&mut rng, 64 * 64);
        let b_host = random_bf16(&mut rng, 64 * 64);
        let a = stream.clone_htod(&a_host).unwrap();
        let b = stream.clone_htod(&b_host).unwrap();
        let c = stream.clone_htod(&vec![f32::NAN; 64 * 64]).unwrap();
        let ((pa, ga), (pb, gb), (pc, gc)) = (
            a.device_ptr(stream),
            b.device_ptr(stream),
            c.device_ptr(stream),
        );
        let params = NvlmWgmmaSelftest {
            a: pa,
            b: pb,
            c: pc,
        };
        drop((ga, gb, gc));
        let (f, cfg) = one_block(
            &gpu,
            "selftest_wgmma_tile",
            128,
            hopper_selftests::WGMMA_TILE_SMEM,
        );
        // SAFETY: a, b hold 64x64 bf16 and c 64x64 f32.
        unsafe { stream.launch_builder(&f).arg(&params).launch(cfg) }.unwrap();
        let got = stream.clone_dtoh(&c).unwrap();
        let rel = hopper_selftests::tile_product_error(&a_host, &b_host, &got);
        assert!(
            rel < hopper_selftests::PRODUCT_TOLERANCE,
            "relative error {rel:e}"
        );
    }
}

/// A [rows, cols] row-major bf16 matrix as a tensor map with 64x64 boxes
/// and the 128-byte swizzle (the layout the attention tiles use).
fn swizzled_map(gpu: &Gpu, addr: u64, rows: u64, cols: u64) -> TensorMap {
    TensorMap::tiled(
        gpu,
        &Tiled2d::matrix(
            addr,
            TmaElement::Bf16,
            (cols, rows, cols * 2),
            (64, 64),
            TmaSwizzle::B128,
        ),
    )
    .unwrap()
}

#[test]
fn wgmma_reads_swizzled_k_major_tiles_loaded_by_tma() {
    let Some(gpu) = hopper_or_skip("wgmma_reads_swizzled_k_major_tiles_loaded_by_tma") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("wgmma_swizzled");
    let stream = gpu.stream();
    let a_host = random_bf16(&mut rng, 64 * 128);
    let b_host = random_bf16(&mut rng, 64 * 128);
    let a = stream.clone_htod(&a_host).unwrap();
    let b = stream.clone_htod(&b_host).unwrap();
    let c = stream.clone_htod(&vec![f32::NAN; 64 * 64]).unwrap();
    let ((pa, ga), (pb, gb), (pc, gc)) = (
        a.device_ptr(stream),
        b.device_ptr(stream),
        c.device_ptr(stream),
    );
    let (a_map, b_map) = (
        swizzled_map(&gpu, pa, 64, 128),
        swizzled_map(&gpu, pb, 64, 128),
    );
    let params = nvlm_vision::abi::NvlmWgmmaSwizzledSelftest { c: pc };
    drop((ga, gb, gc));
    let (f, cfg) = one_block(
        &gpu,
        "selftest_wgmma_swizzled",
        128,
        hopper_selftests::WGMMA_SWIZZLED_SMEM,
    );
    // SAFETY: the maps describe the live a and b (64x128 bf16); c holds
    // 64x64 f32.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&a_map)
            .arg(&b_map)
            .arg(&params)
            .launch(cfg)
    }
    .unwrap();
    let got = stream.clone_dtoh(&c).unwrap();
    let rel = hopper_selftests::swizzled_product_error(&a_host, &b_host, &got);
    assert!(
        rel < hopper_selftests::PRODUCT_TOLERANCE,
        "relative error {rel:e}"
    );
}

#[test]
fn wgmma_takes_a_from_registers_and_mn_major_b() {
    let Some(gpu) = hopper_or_skip("wgmma_takes_a_from_registers_and_mn_major_b") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("wgmma_rs");
    let stream = gpu.stream();
    let p_host = random_bf16(&mut rng, 64 * 64);
    let v_host = random_bf16(&mut rng, 64 * 128);
    let p = stream.clone_htod(&p_host).unwrap();
    let v = stream.clone_htod(&v_host).unwrap();
    let c = stream.clone_htod(&vec![f32::NAN; 64 * 128]).unwrap();
    let ((pp, gp), (pv, gv), (pc, gc)) = (
        p.device_ptr(stream),
        v.device_ptr(stream),
        c.device_ptr(stream),
    );
    let v_map = swizzled_map(&gpu, pv, 64, 128);
    let params = nvlm_vision::abi::NvlmWgmmaRsSelftest { p: pp, c: pc };
    drop((gp, gv, gc));
    let (f, cfg) = one_block(
        &gpu,
        "selftest_wgmma_rs",
        128,
        hopper_selftests::WGMMA_RS_SMEM,
    );
    // SAFETY: the map describes the live v (64x128 bf16); p holds 64x64
    // bf16 and c 64x128 f32.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&v_map)
            .arg(&params)
            .launch(cfg)
    }
    .unwrap();
    let got = stream.clone_dtoh(&c).unwrap();
    let rel = hopper_selftests::register_a_product_error(&p_host, &v_host, &got);
    assert!(
        rel < hopper_selftests::PRODUCT_TOLERANCE,
        "relative error {rel:e}"
    );
}
