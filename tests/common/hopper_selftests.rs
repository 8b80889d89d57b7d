//! What the Hopper primitives' self-tests (kernels/hopper_selftest.cu) must
//! produce: shared by the GPU tests (tests/gpu_hopper_primitives.rs) and the
//! self-tests' runs on the host emulation (src/hopper_selftest_emulated.rs
//! includes this file by path), so that a GPU failure is the hardware's
//! reading of a primitive, not the test's expectation.

use half::bf16;
use nvlm_vision::abi::{NvlmClusterSelftest, NvlmTmaSelftest};
use nvlm_vision::attention::AttentionLayout;
use nvlm_vision::hopper::{Tiled2d, TmaElement, TmaSwizzle};

/// Slack each self-test asks for beyond its tiles: the kernels round the
/// dynamic shared memory up to a 1024-byte boundary.
pub const SMEM_SLACK: u32 = 1024;
/// Dynamic shared memory of each self-test kernel.
pub const PIPELINE_SMEM: u32 = PIPELINE_STAGES * PIPELINE_TILE_ROWS * 64 * 2 + SMEM_SLACK;
pub const WGMMA_TILE_SMEM: u32 = 2 * 64 * 64 * 2 + SMEM_SLACK;
pub const TMA_4D_SMEM: u32 = BOX_BYTES as u32 + SMEM_SLACK;
pub const WGMMA_SWIZZLED_SMEM: u32 = 4 * 8192 + SMEM_SLACK;
pub const WGMMA_RS_SMEM: u32 = 2 * 8192 + SMEM_SLACK;

/// `selftest_mbarrier_pipeline`'s ring: stages, rows per tile, and threads
/// (a consumer warpgroup and the producer warp).
pub const PIPELINE_STAGES: u32 = 2;
pub const PIPELINE_TILE_ROWS: u32 = 32;
pub const PIPELINE_THREADS: u32 = 160;

/// `selftest_tma_round_trip`'s geometry: the source and destination
/// matrices (width, height, row pitch in elements) and the box; the
/// element no store may touch.
pub const ROUND_TRIP_SRC: (u32, u32, u32) = (100, 70, 104);
pub const ROUND_TRIP_DST: (u32, u32, u32) = (72, 40, 80);
pub const ROUND_TRIP_BOX: (u32, u32) = (64, 32);
pub const ROUND_TRIP_SMEM: u32 = ROUND_TRIP_BOX.0 * ROUND_TRIP_BOX.1 * 2 + SMEM_SLACK;
pub const POISON: u16 = 0xFFFF;

/// The round trip's source or destination map at `address`: a bf16
/// matrix of (width, height, row pitch in elements), unswizzled boxes.
pub fn round_trip_matrix(address: u64, (width, height, pitch): (u32, u32, u32)) -> Tiled2d {
    Tiled2d::matrix(
        address,
        TmaElement::Bf16,
        (width.into(), height.into(), u64::from(pitch) * 2),
        ROUND_TRIP_BOX,
        TmaSwizzle::None,
    )
}

/// `selftest_cluster_multicast`'s shared memory: two round-trip boxes and
/// two barriers.
pub const CLUSTER_SMEM: u32 = 2 * ROUND_TRIP_BOX.0 * ROUND_TRIP_BOX.1 * 2 + 16 + SMEM_SLACK;

/// The cluster self-test's parameters: CTA r multicasts the round-trip
/// source's box at (load.0, load.1 + r · box height); `out` holds both
/// CTAs' tiles.
pub fn cluster_params(out: u64, load: (i32, i32)) -> NvlmClusterSelftest {
    NvlmClusterSelftest {
        out,
        x: load.0,
        y: load.1,
        box_width: ROUND_TRIP_BOX.0,
        box_height: ROUND_TRIP_BOX.1,
    }
}

/// What `selftest_cluster_multicast` must leave in `out`: in each of the
/// two CTAs' tiles, both boxes (the first CTA's, then the second's), with
/// zeros outside the source.
pub fn cluster_expected(src: &[u16], load: (i32, i32)) -> Vec<u16> {
    let box_at =
        |r: i32| round_trip_expected(src, (load.0, load.1 + r * ROUND_TRIP_BOX.1 as i32), (0, 0)).0;
    let tile: Vec<u16> = [box_at(0), box_at(1)].concat();
    [tile.clone(), tile].concat()
}

/// The round trip's parameters: the box loaded at `load` is copied to
/// `box_out` and stored at `store`.
pub fn round_trip_params(box_out: u64, load: (i32, i32), store: (i32, i32)) -> NvlmTmaSelftest {
    NvlmTmaSelftest {
        box_out,
        load_x: load.0,
        load_y: load.1,
        store_x: store.0,
        store_y: store.1,
        box_width: ROUND_TRIP_BOX.0,
        box_height: ROUND_TRIP_BOX.1,
    }
}

/// What `selftest_tma_round_trip` must leave: the box loaded at `load`
/// (zeros outside the source), and the destination (filled with `POISON`
/// before) with that box stored at `store`, clipped to its width and
/// height (the pitch's padding columns untouched).
pub fn round_trip_expected(
    src: &[u16],
    load: (i32, i32),
    store: (i32, i32),
) -> (Vec<u16>, Vec<u16>) {
    let (src_w, src_h, src_pitch) = ROUND_TRIP_SRC;
    let (dst_w, dst_h, dst_pitch) = ROUND_TRIP_DST;
    let (box_w, box_h) = ROUND_TRIP_BOX;
    let mut boxed = vec![0u16; (box_w * box_h) as usize];
    for by in 0..box_h as i32 {
        for bx in 0..box_w as i32 {
            let (x, y) = (load.0 + bx, load.1 + by);
            if (0..src_w as i32).contains(&x) && (0..src_h as i32).contains(&y) {
                boxed[(by as u32 * box_w + bx as u32) as usize] =
                    src[(y as u32 * src_pitch + x as u32) as usize];
            }
        }
    }
    let mut dst = vec![POISON; (dst_pitch * dst_h) as usize];
    for y in 0..dst_h as i32 {
        for x in 0..dst_w as i32 {
            let (bx, by) = (x - store.0, y - store.1);
            if (0..box_w as i32).contains(&bx) && (0..box_h as i32).contains(&by) {
                dst[(y as u32 * dst_pitch + x as u32) as usize] =
                    boxed[(by as u32 * box_w + bx as u32) as usize];
            }
        }
    }
    (boxed, dst)
}

/// The index and values of the first element where `got` and `want`
/// differ.
pub fn first_difference<T: PartialEq + Copy>(got: &[T], want: &[T]) -> Option<(usize, T, T)> {
    assert_eq!(got.len(), want.len());
    (0..want.len())
        .find(|&i| got[i] != want[i])
        .map(|i| (i, got[i], want[i]))
}

/// What `selftest_mbarrier_pipeline` must write for a [rows, 64] bf16
/// matrix: each column's sum, then each column's sum of squares (fused
/// multiply-adds), accumulated in row order as the kernel does.
pub fn column_sums(matrix: &[u16], rows: usize) -> Vec<f32> {
    let mut out = vec![0f32; 128];
    for c in 0..64 {
        for r in 0..rows {
            let v = bf16::from_bits(matrix[r * 64 + c]).to_f32();
            out[c] += v;
            out[64 + c] = v.mul_add(v, out[64 + c]);
        }
    }
    out
}

/// `selftest_tma_4d`: token rows and d-columns of one box, and its bytes
/// in shared memory.
pub const BOX_ROWS: usize = 128;
pub const BOX_COLUMNS: usize = 64;
pub const BOX_BYTES: usize = BOX_ROWS * BOX_COLUMNS * 2;

/// The box at tokens `token0..token0 + 128`, columns `d0..d0 + 64` of
/// (`head`, `batch`): its coordinates for the map (innermost first, tokens
/// before heads when `tokens_inner`, as the kernel's `load_tile` orders
/// them) and the bytes it must land as, 128-byte swizzled, with zeros for
/// tokens past the end. `elements` is the whole buffer `layout` views.
pub fn expected_box(
    elements: &[u16],
    layout: &AttentionLayout,
    tokens_inner: bool,
    (d0, token0, head, batch): (usize, usize, usize, usize),
) -> ([i32; 4], Vec<u8>) {
    let coords = if tokens_inner {
        [d0, token0, head, batch]
    } else {
        [d0, head, token0, batch]
    }
    .map(|c| c as i32);
    let mut bytes = vec![0u8; BOX_BYTES];
    for r in 0..BOX_ROWS {
        let token = token0 + r;
        if token >= layout.tokens {
            continue;
        }
        for c in 0..BOX_COLUMNS {
            let value = elements[layout.index(batch, token, head, d0 + c)];
            let at = TmaSwizzle::B128.position((r * 128 + c * 2) as u64) as usize;
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
    }
    (coords, bytes)
}

/// Layouts the kernel reads: packed qkv (heads inside tokens, with the
/// part's offset), contiguous `[B, N, H, D]`, torch's head-major
/// `[B, H, N, D]` (tokens inside heads), and `[B, N, H, D]` with gaps after
/// each head, token and batch and an offset of 8 elements. That last map's
/// address is 16 bytes past a 128-byte boundary: the driver asks 16-byte
/// alignment of it, while the CUDA Programming Guide's table of swizzle
/// requirements lists 128 bytes; a GPU run of this box says which holds.
pub fn layouts(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> [AttentionLayout; 4] {
    use nvlm_vision::attention::QkvPart;
    let dense = AttentionLayout::contiguous(batch, tokens, heads, head_dim);
    let head = head_dim + 8;
    let token = heads * head + 16;
    [
        AttentionLayout::packed_qkv(batch, tokens, heads, head_dim, QkvPart::K),
        dense,
        AttentionLayout::heads_outer(batch, tokens, heads, head_dim),
        AttentionLayout {
            offset: 8,
            strides: [tokens * token + 24, token, head],
            ..dense
        },
    ]
}

/// ‖got − want‖/‖want‖ of `got` (f32, row-major m×n) against the f64
/// product sum_k a(i, k)·b(k, j); panics on an unwritten (NaN) element.
pub fn relative_error(
    got: &[f32],
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f64,
    b: impl Fn(usize, usize) -> f64,
) -> f64 {
    let (mut err2, mut ref2) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|t| a(i, t) * b(t, j)).sum();
            let g = f64::from(got[i * n + j]);
            assert!(g.is_finite(), "C[{i}][{j}] = {g}: not written or NaN");
            err2 += (g - want).powi(2);
            ref2 += want * want;
        }
    }
    (err2 / ref2).sqrt()
}

/// Element `i` of a bf16 matrix held as bits.
pub fn bf16_at(m: &[u16], i: usize) -> f64 {
    f64::from(bf16::from_bits(m[i]).to_f32())
}

/// `selftest_wgmma_tile`: C (64×64) = A (64×64) · B (64×64)ᵀ, both
/// row-major; its relative error.
pub fn tile_product_error(a: &[u16], b: &[u16], c: &[f32]) -> f64 {
    relative_error(
        c,
        (64, 64, 64),
        |i, t| bf16_at(a, i * 64 + t),
        |t, j| bf16_at(b, j * 64 + t),
    )
}

/// `selftest_wgmma_swizzled`: C (64×64) = A (64×128) · B (64×128)ᵀ, both
/// row-major; its relative error.
pub fn swizzled_product_error(a: &[u16], b: &[u16], c: &[f32]) -> f64 {
    relative_error(
        c,
        (64, 64, 128),
        |i, t| bf16_at(a, i * 128 + t),
        |t, j| bf16_at(b, j * 128 + t),
    )
}

/// `selftest_wgmma_rs`: C (64×128) = P (64×64) · V (64×128), both
/// row-major; its relative error.
pub fn register_a_product_error(p: &[u16], v: &[u16], c: &[f32]) -> f64 {
    relative_error(
        c,
        (64, 128, 64),
        |i, t| bf16_at(p, i * 64 + t),
        |t, j| bf16_at(v, t * 128 + j),
    )
}

/// The bound all the wgmma self-tests hold: f32 accumulation of exact bf16
/// products is good to ~1e-7 relative.
pub const PRODUCT_TOLERANCE: f64 = 1e-5;
