//! The projector front's output rule, shared by its GPU test
//! (tests/gpu_projector.rs) and its emulated run (src/projector/emulated.rs).

/// The front's output is the f64 LayerNorm rounded once to the output type
/// (`eps`·|ref|, the type's unit roundoff), up to its f32 statistics and
/// rsqrtf (≤ 2 ulp on the GPU). The emulation's largest excess over the
/// rounding term was 1.6e-7 at C = 3200 (2026-11-29); a constant error of
/// 9e-4 on every element, which the earlier slack of 1e-3 let through,
/// fails this one.
pub const FRONT_ATOL: f64 = 1e-5;

/// Asserts every element of `got` (f64 values of the front's output, rows
/// of `row_width`) within `eps`·|ref| + [`FRONT_ATOL`] of `want`, and
/// ‖got − want‖ / ‖want‖ < `eps`.
pub fn check_front_output(what: &str, got: &[f64], want: &[f64], eps: f64, row_width: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut diff2, mut want2) = (0.0, 0.0);
    for (e, (g, r)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - r).abs() <= eps * r.abs() + FRONT_ATOL,
            "{what}: element {e} (row {}, k {}): {g} vs {r}",
            e / row_width,
            e % row_width
        );
        diff2 += (g - r) * (g - r);
        want2 += r * r;
    }
    let rel = (diff2 / want2).sqrt();
    assert!(rel < eps, "{what}: rel {rel:e}");
}

/// Asserts `got` (f64 values of bias + GELU's in-place output, `[rows,
/// cols]`) within one rounding to the output type (`eps`·|ref|) and 1e-6 of
/// `gelu?(x + bias?)` computed in f64 from the f32 values of its inputs;
/// `gelu` is the exact erf GELU the caller's crate path names.
pub fn check_bias_gelu_output(
    what: &str,
    got: &[f64],
    (x, bias): (&[f32], Option<&[f32]>),
    gelu: Option<fn(f64) -> f64>,
    eps: f64,
) {
    assert_eq!(got.len(), x.len(), "{what}: lengths");
    for (e, (g, &v)) in got.iter().zip(x).enumerate() {
        let v = f64::from(v) + bias.map_or(0.0, |b| f64::from(b[e % b.len()]));
        let r = gelu.map_or(v, |gelu| gelu(v));
        assert!(
            (g - r).abs() <= eps * r.abs() + 1e-6,
            "{what}: element {e}: {g} vs {r}"
        );
    }
}
