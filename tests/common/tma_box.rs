//! What one 4-D TMA load of the Hopper attention kernel must leave in
//! shared memory (`selftest_tma_4d`, kernels/hopper_selftest.cu): shared by
//! the GPU self-test and the kernel's run on the host emulation
//! (src/attention/emulated.rs includes this file by path).

use nvlm_vision::attention::AttentionLayout;
use nvlm_vision::hopper::TmaSwizzle;

/// Token rows and d-columns of one box, and its bytes in shared memory.
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
        AttentionLayout {
            strides: [heads * tokens * head_dim, head_dim, tokens * head_dim],
            ..AttentionLayout::contiguous(batch, tokens, heads, head_dim)
        },
    ]
}
