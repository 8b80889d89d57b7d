//! What the Hopper primitives' self-tests (kernels/hopper_selftest.cu) must
//! produce: shared by the GPU tests (tests/gpu_hopper_primitives.rs) and the
//! self-tests' runs on the host emulation (src/hopper_selftest_emulated.rs
//! includes this file by path), so that a GPU failure is the hardware's
//! reading of a primitive, not the test's expectation.

use half::bf16;
use nvlm_vision::attention::AttentionLayout;
use nvlm_vision::hopper::TmaSwizzle;

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
/// part's offset), contiguous `[B, N, H, D]`, and torch's head-major
/// `[B, H, N, D]` (tokens inside heads).
pub fn layouts(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> [AttentionLayout; 3] {
    use nvlm_vision::attention::QkvPart;
    [
        AttentionLayout::packed_qkv(batch, tokens, heads, head_dim, QkvPart::K),
        AttentionLayout::contiguous(batch, tokens, heads, head_dim),
        AttentionLayout::heads_outer(batch, tokens, heads, head_dim),
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
