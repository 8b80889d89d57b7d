//! The qk-RMSNorm kernel's acceptance rule, shared by its GPU test
//! (tests/gpu_attention.rs) and its run on the host emulation
//! (src/attention/emulated.rs includes this file by path).

use nvlm_vision::attention::{AttentionElement, QkvRows};
use nvlm_vision::dtype::Dtype;

/// `got` (the kernel's qkv rows) against `want` (the reference's) from
/// `before`: normalised q and k within two units of the dtype, relative;
/// dummy heads and v bit-unchanged.
pub fn check_qk_rms_norm<T: AttentionElement>(rows: &QkvRows, before: &[T], want: &[T], got: &[T]) {
    let part_len = rows.heads_padded * rows.head_dim;
    // The kernel's f32 sum of squares may differ from the reference's mean
    // in its last bits, which can move each of the two roundings (x * r to
    // the dtype, then weight * y) by one unit: allow two units, relative.
    let unit = if T::DTYPE == Dtype::Bf16 {
        2f32.powi(-7)
    } else {
        2f32.powi(-10)
    };
    let tolerance = 2.0 * unit;
    for (i, ((g, w), b)) in got.iter().zip(want).zip(before).enumerate() {
        let column = i % rows.row_len();
        let normalised = column % part_len < rows.width() && column < 2 * part_len;
        let (g, w) = (g.to_f32(), w.to_f32());
        if normalised {
            assert!(
                (g - w).abs() <= w.abs() * tolerance,
                "{rows:?} {:?} element {i}: {g} vs {w}",
                T::DTYPE
            );
        } else {
            assert_eq!(
                g.to_bits(),
                b.to_f32().to_bits(),
                "{rows:?}: element {i} (dummy head or v) changed"
            );
        }
    }
}
