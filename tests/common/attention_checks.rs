//! The attention kernels' acceptance rules, shared by their GPU tests
//! (tests/gpu_attention.rs) and their runs on the host emulation
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
    // f16 results below 2⁻¹⁴ are subnormal: a unit there is 2⁻²⁴, not
    // relative.
    let floor = if T::DTYPE == Dtype::F16 {
        2.0 * 2f32.powi(-24)
    } else {
        0.0
    };
    for (i, ((g, w), b)) in got.iter().zip(want).zip(before).enumerate() {
        let column = i % rows.row_len();
        let normalised = column % part_len < rows.width() && column < 2 * part_len;
        let (g, w) = (g.to_f32(), w.to_f32());
        if normalised {
            assert!(
                (g - w).abs() <= w.abs() * tolerance + floor,
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

/// The errors of a flash-attention output of `dtype` and of a naive
/// same-precision computation against the f64 reference, element by element.
pub struct FlashErrors {
    dtype: Dtype,
    err: f64,
    naive_err: f64,
    /// FlashAttention-3's atol term: the largest error of `ref + 0.3 - 0.3`
    /// in the output dtype.
    shift_err: f64,
    err_sq: f64,
    naive_sq: f64,
    ref_sq: f64,
}

impl FlashErrors {
    pub fn new(dtype: Dtype) -> FlashErrors {
        FlashErrors {
            dtype,
            err: 0.0,
            naive_err: 0.0,
            shift_err: 0.0,
            err_sq: 0.0,
            naive_sq: 0.0,
            ref_sq: 0.0,
        }
    }

    fn round(&self, x: f64) -> f64 {
        match self.dtype {
            Dtype::Bf16 => half::bf16::from_f64(x).to_f64(),
            Dtype::F16 => half::f16::from_f64(x).to_f64(),
            Dtype::F32 => f64::from(x as f32),
        }
    }

    /// One element: the kernel's `got`, the naive `naive`, the reference `want`.
    pub fn add(&mut self, got: f64, naive: f64, want: f64) {
        self.err = self.err.max((got - want).abs());
        self.naive_err = self.naive_err.max((naive - want).abs());
        let rounded = self.round(want);
        let shifted = self.round(self.round(rounded + 0.3) - 0.3);
        self.shift_err = self.shift_err.max((shifted - rounded).abs());
        self.err_sq += (got - want).powi(2);
        self.naive_sq += (naive - want).powi(2);
        self.ref_sq += want * want;
    }

    /// FlashAttention's rule: the largest error at most twice the naive
    /// computation's plus FlashAttention-3's atol (twice the rounding
    /// error of `ref + 0.3 - 0.3` in the output dtype, since a row whose
    /// naive outputs happen to round exactly leaves no room otherwise), and
    /// the relative error at most twice the naive one. Returns (largest
    /// error, naive largest error).
    pub fn assert_within_rule(&self, what: &str) -> (f64, f64) {
        let (err, naive_err) = (self.err, self.naive_err);
        let atol = 2.0 * self.shift_err;
        assert!(
            err <= 2.0 * naive_err + atol,
            "{what}: max error {err:.3e} > 2 x naive same-precision error {naive_err:.3e} + {atol:.1e}"
        );
        let rel = (self.err_sq / self.ref_sq).sqrt();
        let naive_rel = (self.naive_sq / self.ref_sq).sqrt();
        assert!(
            rel <= 2.0 * naive_rel + 1e-5,
            "{what}: relative error {rel:.3e} > 2 x naive {naive_rel:.3e}"
        );
        (err, naive_err)
    }
}
