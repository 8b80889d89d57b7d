//! The projector on the CPU, in f64: the reference the kernels are tested
//! against. Small dims run whole ([`projector`]); model dims run on a few
//! sampled output rows ([`projector_rows`]), which cost one pass over the
//! weights per row.
//!
//! `pixel_shuffle` is written twice: literally, as InternVL's sequence of
//! torch `view`/`permute` calls replayed on an index array
//! ([`pixel_shuffle_literal`]), and as the closed-form index formula the
//! kernel uses ([`shuffle_source`]); the tests check one against the other.

use super::{ProjectorConfig, PsVersion};
use crate::dtype::Dtype;
use half::{bf16, f16};

/// A contiguous tensor of source indices with torch's `view` and
/// `permute(..).contiguous()`, just enough to replay `pixel_shuffle`.
struct IndexTensor {
    shape: Vec<usize>,
    data: Vec<usize>,
}

impl IndexTensor {
    fn arange(shape: &[usize]) -> IndexTensor {
        IndexTensor {
            shape: shape.to_vec(),
            data: (0..shape.iter().product()).collect(),
        }
    }

    /// `x.view(shape)` on a contiguous tensor: same data, new shape.
    fn view(self, shape: &[usize]) -> IndexTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.data.len(),
            "view {shape:?} of {:?}",
            self.shape
        );
        IndexTensor {
            shape: shape.to_vec(),
            data: self.data,
        }
    }

    /// `x.permute(perm).contiguous()`: output dim d is input dim perm[d].
    fn permute_contiguous(self, perm: &[usize]) -> IndexTensor {
        let rank = self.shape.len();
        let mut in_strides = vec![1; rank];
        for d in (0..rank - 1).rev() {
            in_strides[d] = in_strides[d + 1] * self.shape[d + 1];
        }
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let mut data = Vec::with_capacity(self.data.len());
        let mut index = vec![0usize; rank];
        for _ in 0..self.data.len() {
            let src: usize = (0..rank).map(|d| index[d] * in_strides[perm[d]]).sum();
            data.push(self.data[src]);
            for d in (0..rank).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        IndexTensor { shape, data }
    }
}

/// InternVL's `pixel_shuffle(x, scale_factor=0.5)` on `x` of shape
/// `[n, w, h, c]`, replayed literally on indices: element `e` of the
/// returned `[n, w/2, h/2, 4c]` tensor (v2; `[n, h/2, w/2, 4c]` for v1)
/// is the flat index into `x` it copies.
pub fn pixel_shuffle_literal(n: usize, w: usize, h: usize, c: usize, ps: PsVersion) -> Vec<usize> {
    let x = IndexTensor::arange(&[n, w, h, c]);
    // N, W, H, C --> N, W, H * scale, C // scale
    let x = x.view(&[n, w, h / 2, c * 2]);
    // N, W, H * scale, C // scale --> N, H * scale, W, C // scale
    let x = x.permute_contiguous(&[0, 2, 1, 3]);
    // N, H * scale, W, C // scale --> N, H * scale, W * scale, C // (scale ** 2)
    let x = x.view(&[n, h / 2, w / 2, c * 4]);
    let x = match ps {
        PsVersion::V1 => x,
        PsVersion::V2 => x.permute_contiguous(&[0, 2, 1, 3]),
    };
    x.data
}

/// The closed form of `pixel_shuffle`: element `k` of output cell (i, j)
/// copies channel `ch` of the input grid cell (row, col), returned as
/// `(row, col, ch)`. Row is the patch row (token = row * side + col).
/// The kernel computes the same thing per 2C-long run: `k / (2C)` picks the
/// run (the input row), and each run is two horizontally adjacent tokens.
pub fn shuffle_source(
    ps: PsVersion,
    c: usize,
    i: usize,
    j: usize,
    k: usize,
) -> (usize, usize, usize) {
    let dy = k / (2 * c);
    let dx = (k / c) % 2;
    let ch = k % c;
    match ps {
        PsVersion::V2 => (2 * i + dy, 2 * j + dx, ch),
        PsVersion::V1 => (2 * j + dy, 2 * i + dx, ch),
    }
}

/// Exact GELU, `x/2 · (1 + erf(x/√2))` (torch's default `nn.GELU()`).
pub fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// The tanh approximation, `nn.GELU(approximate='tanh')`.
pub fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

/// Rounds `v` to `dtype` and back (identity for f32 is not wanted here:
/// `None` keeps full f64).
pub fn round_to(v: f64, dtype: Option<Dtype>) -> f64 {
    match dtype {
        None => v,
        Some(Dtype::F32) => f64::from(v as f32),
        Some(Dtype::Bf16) => f64::from(bf16::from_f64(v).to_f32()),
        Some(Dtype::F16) => f64::from(f16::from_f64(v).to_f32()),
    }
}

/// LayerNorm of one row (biased variance, as torch), f64 statistics.
pub fn layer_norm(row: &[f64], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + f64::from(eps)).sqrt();
    row.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (g, b))| (v - mean) * rstd * f64::from(*g) + f64::from(*b))
        .collect()
}

/// `y = x · wᵀ + b` for one row: `w` is `[out, in]` row-major (PyTorch's
/// `nn.Linear.weight`), `bias` `[out]`.
pub fn linear_row(x: &[f64], w: &[f32], bias: Option<&[f32]>, out: usize) -> Vec<f64> {
    let k = x.len();
    assert_eq!(w.len(), out * k, "linear weight is [{out}, {k}]");
    (0..out)
        .map(|o| {
            let dot: f64 = w[o * k..(o + 1) * k]
                .iter()
                .zip(x)
                .map(|(w, x)| f64::from(*w) * x)
                .sum();
            dot + bias.map_or(0.0, |b| f64::from(b[o]))
        })
        .collect()
}

/// Host copies of the projector's weights as f32 values (the caller
/// converts from the checkpoint dtype), in PyTorch's layout.
pub struct HostWeights {
    pub ln_gamma: Vec<f32>,
    pub ln_beta: Vec<f32>,
    /// `[linear1_out, 4C]`
    pub w1: Vec<f32>,
    pub b1: Option<Vec<f32>>,
    /// `[linear2_out, linear1_out]`, absent for a one-layer projector.
    pub w2: Option<Vec<f32>>,
    pub b2: Option<Vec<f32>>,
}

/// The GEMM-ready row of output cell `(i, j)` of tile `tile`: pixel-shuffled
/// and layer-normed, before rounding. `input` is the `[T, tokens, C]` last
/// hidden state as f32 values.
pub fn front_row(
    cfg: &ProjectorConfig,
    input: &[f32],
    w: &HostWeights,
    tile: usize,
    i: usize,
    j: usize,
) -> Vec<f64> {
    let c = cfg.vit_hidden;
    let tokens = cfg.tokens_per_tile();
    let first = usize::from(cfg.cls_token);
    let row: Vec<f64> = (0..4 * c)
        .map(|k| {
            let (r, col, ch) = shuffle_source(cfg.ps_version, c, i, j, k);
            let token = first + r * cfg.grid_side + col;
            f64::from(input[(tile * tokens + token) * c + ch])
        })
        .collect();
    layer_norm(&row, &w.ln_gamma, &w.ln_beta, cfg.ln_eps)
}

/// The MLP on one GEMM-ready row, rounding to `rounding` where the GPU path
/// (and torch in that dtype) stores a tensor: after LayerNorm, after each
/// Linear, after GELU. `None` keeps f64 throughout.
pub fn mlp_row(
    cfg: &ProjectorConfig,
    front: &[f64],
    w: &HostWeights,
    rounding: Option<Dtype>,
) -> Vec<f64> {
    let x: Vec<f64> = front.iter().map(|&v| round_to(v, rounding)).collect();
    let h = linear_row(&x, &w.w1, w.b1.as_deref(), cfg.linear1_out);
    let Some(out2) = cfg.linear2_out else {
        return h.into_iter().map(|v| round_to(v, rounding)).collect();
    };
    let h: Vec<f64> = h
        .into_iter()
        .map(|v| round_to(gelu_erf(round_to(v, rounding)), rounding))
        .collect();
    let w2 = w.w2.as_deref().expect("a two-layer projector has w2");
    linear_row(&h, w2, w.b2.as_deref(), out2)
        .into_iter()
        .map(|v| round_to(v, rounding))
        .collect()
}

/// The whole projector: `[T, tokens, C]` → `[T · (side/2)², out]`, row-major.
pub fn projector(
    cfg: &ProjectorConfig,
    input: &[f32],
    tiles: usize,
    w: &HostWeights,
    rounding: Option<Dtype>,
) -> Vec<f64> {
    let rows: Vec<usize> = (0..cfg.output_rows(tiles)).collect();
    projector_rows(cfg, input, w, &rows, rounding)
}

/// Output rows `rows` (indices into `[T · (side/2)², out]`) of the
/// projector, concatenated.
pub fn projector_rows(
    cfg: &ProjectorConfig,
    input: &[f32],
    w: &HostWeights,
    rows: &[usize],
    rounding: Option<Dtype>,
) -> Vec<f64> {
    let half = cfg.grid_side / 2;
    rows.iter()
        .flat_map(|&r| {
            let (tile, cell) = (r / (half * half), r % (half * half));
            let front = front_row(cfg, input, w, tile, cell / half, cell % half);
            mlp_row(cfg, &front, w, rounding)
        })
        .collect()
}

/// The front alone (shuffle + LayerNorm) for every row: `[T · (side/2)², 4C]`.
pub fn front(cfg: &ProjectorConfig, input: &[f32], tiles: usize, w: &HostWeights) -> Vec<f64> {
    let half = cfg.grid_side / 2;
    (0..tiles)
        .flat_map(|t| (0..half * half).map(move |cell| (t, cell / half, cell % half)))
        .flat_map(|(t, i, j)| front_row(cfg, input, w, t, i, j))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projector::{GeluMode, ProjectorConfig};

    fn small(c: usize, side: usize, cls: bool, ps: PsVersion) -> ProjectorConfig {
        ProjectorConfig {
            name: "small",
            vit_hidden: c,
            grid_side: side,
            cls_token: cls,
            ps_version: ps,
            ln_eps: 1e-5,
            linear1_out: 5,
            linear2_out: Some(3),
            bias: true,
            gelu: GeluMode::ExactErf,
        }
    }

    /// A deterministic, non-trivial sequence (no zeros, no repeats nearby).
    fn values(n: usize, salt: u64) -> Vec<f32> {
        let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
            })
            .collect()
    }

    #[test]
    fn closed_form_equals_literal_view_permute() {
        // Odd and even channel counts, several grid sides (32 is the
        // models'), two images, both ps versions.
        for ps in [PsVersion::V1, PsVersion::V2] {
            for &(side, c) in &[(2, 1), (4, 3), (6, 5), (8, 7), (32, 3), (32, 8), (4, 17)] {
                let n = 2;
                let literal = pixel_shuffle_literal(n, side, side, c, ps);
                let half = side / 2;
                assert_eq!(literal.len(), n * half * half * 4 * c);
                for (e, &src) in literal.iter().enumerate() {
                    let k = e % (4 * c);
                    let cell = e / (4 * c);
                    let (t, i, j) = (cell / (half * half), (cell / half) % half, cell % half);
                    let (r, col, ch) = shuffle_source(ps, c, i, j, k);
                    let formula = ((t * side + r) * side + col) * c + ch;
                    assert_eq!(
                        src, formula,
                        "{ps:?} side {side} C {c}: element {e} (t{t} i{i} j{j} k{k})"
                    );
                }
            }
        }
    }

    /// The front kernel's address arithmetic (kernels/projector.cu,
    /// `front`), transcribed: the input element read for element k of
    /// output row r, in the `[T, tokens, C]` encoder output.
    fn kernel_source_offset(cfg: &ProjectorConfig, r: usize, k: usize) -> usize {
        let (c, side) = (cfg.vit_hidden, cfg.grid_side);
        let half = side / 2;
        let t = r / (half * half);
        let cell = r - t * half * half;
        let i = cell / half;
        let j = cell - i * half;
        let transpose = cfg.ps_version == PsVersion::V1;
        let grid_row = if transpose { 2 * j } else { 2 * i };
        let grid_col = if transpose { 2 * i } else { 2 * j };
        let token =
            t * cfg.tokens_per_tile() + usize::from(cfg.cls_token) + grid_row * side + grid_col;
        let run0 = token * c;
        let run1 = run0 + side * c;
        if k < 2 * c {
            run0 + k
        } else {
            run1 + (k - 2 * c)
        }
    }

    #[test]
    fn kernel_addressing_equals_literal_shuffle_of_the_encoder_output() {
        for ps in [PsVersion::V1, PsVersion::V2] {
            for cls in [false, true] {
                for &(side, c) in &[(32, 3), (32, 8), (6, 5), (4, 16)] {
                    let cfg = small(c, side, cls, ps);
                    let tiles = 3;
                    // The literal shuffle indexes the CLS-free [T, side, side, C]
                    // grid; map its indices into [T, tokens, C].
                    let lit = pixel_shuffle_literal(tiles, side, side, c, ps);
                    for (e, &src) in lit.iter().enumerate() {
                        let (t, rest) = (src / (side * side * c), src % (side * side * c));
                        let expected = (t * cfg.tokens_per_tile() + usize::from(cls)) * c + rest;
                        let (r, k) = (e / (4 * c), e % (4 * c));
                        assert_eq!(
                            kernel_source_offset(&cfg, r, k),
                            expected,
                            "{ps:?} cls {cls} side {side} C {c}: row {r} k {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn v1_is_the_transpose_of_v2() {
        let (side, c) = (6, 3);
        let v1 = pixel_shuffle_literal(1, side, side, c, PsVersion::V1);
        let v2 = pixel_shuffle_literal(1, side, side, c, PsVersion::V2);
        let half = side / 2;
        let mut any_differs = false;
        for i in 0..half {
            for j in 0..half {
                for k in 0..4 * c {
                    let a = v1[(i * half + j) * 4 * c + k];
                    assert_eq!(a, v2[(j * half + i) * 4 * c + k]);
                    any_differs |= a != v2[(i * half + j) * 4 * c + k];
                }
            }
        }
        assert!(any_differs, "v1 and v2 must differ off the diagonal");
    }

    #[test]
    fn each_output_row_is_two_contiguous_runs_of_2c() {
        // The kernel's access pattern: k in [0, 2C) and [2C, 4C) each map
        // to 2C consecutive input elements.
        for ps in [PsVersion::V1, PsVersion::V2] {
            let (side, c) = (8, 5);
            let lit = pixel_shuffle_literal(1, side, side, c, ps);
            for row in lit.chunks(4 * c) {
                for run in row.chunks(2 * c) {
                    assert!(run.windows(2).all(|p| p[1] == p[0] + 1), "{ps:?}: {run:?}");
                }
            }
        }
    }

    #[test]
    fn front_matches_literal_shuffle_then_layer_norm_with_and_without_cls() {
        for cls in [false, true] {
            for ps in [PsVersion::V1, PsVersion::V2] {
                let cfg = small(7, 4, cls, ps);
                let tiles = 3;
                let tokens = cfg.tokens_per_tile();
                let input = values(tiles * tokens * 7, 1 + u64::from(cls));
                let w = HostWeights {
                    ln_gamma: values(28, 3),
                    ln_beta: values(28, 4),
                    w1: vec![],
                    b1: None,
                    w2: None,
                    b2: None,
                };
                // Literal: drop CLS, shuffle by view/permute, LayerNorm.
                let first = usize::from(cls);
                let grid: Vec<f32> = (0..tiles)
                    .flat_map(|t| {
                        input[(t * tokens + first) * 7..(t + 1) * tokens * 7]
                            .iter()
                            .copied()
                    })
                    .collect();
                let lit = pixel_shuffle_literal(tiles, 4, 4, 7, ps);
                let expected: Vec<f64> = lit
                    .chunks(28)
                    .flat_map(|row| {
                        let row: Vec<f64> = row.iter().map(|&s| f64::from(grid[s])).collect();
                        layer_norm(&row, &w.ln_gamma, &w.ln_beta, cfg.ln_eps)
                    })
                    .collect();
                assert_eq!(front(&cfg, &input, tiles, &w), expected, "cls {cls} {ps:?}");
            }
        }
    }

    #[test]
    fn layer_norm_normalises_and_applies_affine() {
        let row = [1.0, 2.0, 3.0, 6.0];
        let ones = [1.0f32; 4];
        let zeros = [0.0f32; 4];
        let y = layer_norm(&row, &ones, &zeros, 0.0);
        let mean: f64 = y.iter().sum::<f64>() / 4.0;
        let var: f64 = y.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-15 && (var - 1.0).abs() < 1e-12, "{y:?}");
        // mean 3, biased var 3.5: (6 - 3) / sqrt(3.5) * 2 + 0.5
        let y = layer_norm(&row, &[2.0; 4], &[0.5; 4], 0.0);
        assert!((y[3] - (3.0 / 3.5f64.sqrt() * 2.0 + 0.5)).abs() < 1e-12);
        // eps enters under the root
        let y = layer_norm(&row, &ones, &zeros, 0.5);
        assert!((y[3] - 3.0 / 4.0f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn linear_uses_pytorch_out_in_layout() {
        // w = [[1, 2, 3], [4, 5, 6]] : out 2, in 3
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = linear_row(&[1.0, 0.0, -1.0], &w, Some(&[0.5, -0.5]), 2);
        assert_eq!(y, vec![-2.0 + 0.5, -2.0 - 0.5]);
        let y = linear_row(&[0.0, 1.0, 0.0], &w, None, 2);
        assert_eq!(y, vec![2.0, 5.0]);
    }

    #[test]
    fn gelu_erf_known_values_and_differs_from_tanh() {
        // Φ(1) = 0.8413447460685429, Φ(-2) = 0.022750131948179195
        assert!((gelu_erf(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((gelu_erf(-2.0) + 2.0 * 0.022_750_131_948_179_195).abs() < 1e-15);
        assert_eq!(gelu_erf(0.0), 0.0);
        // The approximation differs by ~1e-4 around |x| ≈ 2: enough to tell
        // them apart in f32 from a GPU.
        let d = (gelu_erf(-2.0) - gelu_tanh(-2.0)).abs();
        assert!(d > 5e-5 && d < 1e-3, "{d}");
    }

    #[test]
    fn whole_projector_equals_its_pieces_one_and_two_layers() {
        let mut cfg = small(3, 4, true, PsVersion::V2);
        let tiles = 2;
        let input = values(tiles * cfg.tokens_per_tile() * 3, 9);
        let w = HostWeights {
            ln_gamma: values(12, 10),
            ln_beta: values(12, 11),
            w1: values(5 * 12, 12),
            b1: Some(values(5, 13)),
            w2: Some(values(3 * 5, 14)),
            b2: Some(values(3, 15)),
        };
        let out = projector(&cfg, &input, tiles, &w, None);
        assert_eq!(out.len(), tiles * 4 * 3);
        let fr = front(&cfg, &input, tiles, &w);
        for r in 0..tiles * 4 {
            let h: Vec<f64> = linear_row(&fr[r * 12..(r + 1) * 12], &w.w1, w.b1.as_deref(), 5)
                .into_iter()
                .map(gelu_erf)
                .collect();
            let y = linear_row(&h, w.w2.as_deref().unwrap(), w.b2.as_deref(), 3);
            assert_eq!(&out[r * 3..(r + 1) * 3], &y[..], "row {r}");
        }
        // Sampled rows are the same rows.
        assert_eq!(
            projector_rows(&cfg, &input, &w, &[5, 1], None),
            [&out[15..18], &out[3..6]].concat()
        );
        // Rounding to bf16 changes the values but only at bf16 level.
        let rounded = projector(&cfg, &input, tiles, &w, Some(Dtype::Bf16));
        let err = rounded
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = out.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(err > 0.0 && err < 0.02 * scale, "{err} of {scale}");
        // One layer: LN then Linear 1 only, no GELU.
        cfg.linear2_out = None;
        let one = projector(&cfg, &input, tiles, &w, None);
        assert_eq!(
            one,
            linear_row(&fr[0..12], &w.w1, w.b1.as_deref(), 5)
                .into_iter()
                .chain((1..tiles * 4).flat_map(|r| linear_row(
                    &fr[r * 12..(r + 1) * 12],
                    &w.w1,
                    w.b1.as_deref(),
                    5
                )))
                .collect::<Vec<_>>()
        );
    }
}
