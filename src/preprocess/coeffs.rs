//! Pillow's bicubic coefficient tables for one axis, in 22-bit fixed point.
//!
//! Computed in f64 exactly as Pillow's `precompute_coeffs` and
//! `normalize_coeffs_8bpc` (`src/libImaging/Resample.c`) do, operation for
//! operation, so the rounded integers match. These tables are host data: the
//! CPU resize uses them and the GPU kernel takes the same arrays.

/// Fractional bits of a fixed-point coefficient: 32 − 8 − 2.
pub const PRECISION_BITS: u32 = 22;

/// Keys' cubic with a = −0.5, as Pillow's `bicubic_filter`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}
const BICUBIC_SUPPORT: f64 = 2.0;

/// The taps of a resize from `in_size` to `out_size` samples along one axis.
///
/// Output sample `o` is `clip8((2^21 + Σ_t input[first[o] + t] · coeffs[o·taps + t]) >> 22)`
/// for `t < count[o]`; `coeffs` past `count[o]` are zero, so a kernel may also
/// run all `taps` when `first[o] + taps` stays in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxisCoefficients {
    pub in_size: u32,
    pub out_size: u32,
    /// Row length of `coeffs` (Pillow's `ksize`).
    pub taps: u32,
    /// First input index read by each output sample.
    pub first: Vec<u32>,
    /// Number of input samples read by each output sample (≤ `taps`).
    pub count: Vec<u32>,
    /// `out_size × taps` fixed-point weights, row-major.
    pub coeffs: Vec<i32>,
}

impl AxisCoefficients {
    /// Bicubic taps for the whole input range (Pillow's `box` = `(0, in_size)`).
    /// Both sizes must be non-zero.
    pub fn bicubic(in_size: u32, out_size: u32) -> AxisCoefficients {
        assert!(in_size > 0 && out_size > 0, "axis sizes must be non-zero");
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let taps = support.ceil() as u32 * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut first = Vec::with_capacity(out_size as usize);
        let mut count = Vec::with_capacity(out_size as usize);
        let mut coeffs = vec![0i32; out_size as usize * taps as usize];
        let mut weights = vec![0f64; taps as usize];
        for (o, row) in coeffs.chunks_exact_mut(taps as usize).enumerate() {
            let center = (o as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's `(int)`; clamp afterwards as Pillow does.
            let xmin = ((center - support + 0.5) as i64).max(0) as u32;
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as u32;
            let n = (xmax - xmin) as usize;
            let mut sum = 0.0;
            for (x, w) in weights[..n].iter_mut().enumerate() {
                *w = bicubic((x as f64 + f64::from(xmin) - center + 0.5) * inv_filterscale);
                sum += *w;
            }
            for (w, c) in weights[..n].iter().zip(row.iter_mut()) {
                let w = if sum != 0.0 { w / sum } else { *w };
                *c = to_fixed(w);
            }
            first.push(xmin);
            count.push(n as u32);
        }
        AxisCoefficients {
            in_size,
            out_size,
            taps,
            first,
            count,
            coeffs,
        }
    }

    /// One tap of weight 1.0 per sample: a pass that returns its input, since
    /// `(v · 2^22 + 2^21) >> 22 = v`. The fused GPU kernel runs it on the axis
    /// a one-pass resize (or a copy) leaves alone.
    pub(crate) fn identity(size: u32) -> AxisCoefficients {
        assert!(size > 0, "axis sizes must be non-zero");
        AxisCoefficients {
            in_size: size,
            out_size: size,
            taps: 1,
            first: (0..size).collect(),
            count: vec![1; size as usize],
            coeffs: vec![1 << PRECISION_BITS; size as usize],
        }
    }

    /// The weights of output sample `o`, `count[o]` long.
    #[inline]
    pub fn weights(&self, o: usize) -> &[i32] {
        let start = o * self.taps as usize;
        &self.coeffs[start..start + self.count[o] as usize]
    }

    /// One past the last input index any output sample reads.
    pub fn input_end(&self) -> u32 {
        let last = self.out_size as usize - 1;
        self.first[last] + self.count[last]
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero, then truncate to int.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Pillow's `clip8` of a fixed-point accumulator.
#[inline(always)]
pub fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The accumulator's starting value: one half, for rounding.
pub const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sized_axis_is_one_tap_of_one() {
        // Upscale-free same size: centre lands on a sample, neighbours at ±1
        // have weight 0 in Keys' cubic.
        let axis = AxisCoefficients::bicubic(5, 5);
        for o in 0..5 {
            let w = axis.weights(o);
            let centre = o - axis.first[o] as usize;
            assert_eq!(w[centre], 1 << PRECISION_BITS);
            assert_eq!(w.iter().sum::<i32>(), 1 << PRECISION_BITS);
        }
    }

    #[test]
    fn downscale_widens_the_kernel_and_weights_sum_to_one() {
        let axis = AxisCoefficients::bicubic(4032, 448);
        assert_eq!(axis.taps, 37); // ceil(2·9)·2 + 1
        for o in 0..448 {
            let sum: i32 = axis.weights(o).iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= axis.count[o] as i32,
                "o={o} sum={sum}"
            );
            assert!(axis.first[o] + axis.count[o] <= 4032);
        }
        assert_eq!(axis.input_end(), 4032);
    }

    #[test]
    fn clip8_clamps_both_ends() {
        assert_eq!(clip8(-5), 0);
        assert_eq!(clip8(ROUNDING), 0);
        assert_eq!(clip8(200 << PRECISION_BITS | ROUNDING), 200);
        assert_eq!(clip8(300 << PRECISION_BITS), 255);
    }
}
