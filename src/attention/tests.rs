//! The CPU references on hand-checkable cases, and every host-side check
//! of the GPU entry points (they run without a GPU).

use super::*;
use half::{bf16, f16};

/// SplitMix64: deterministic inputs for the reference tests (and the
/// emulated kernels' and self-tests').
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn fill<T: AttentionElement>(&mut self, n: usize, amplitude: f32) -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(self.unit() * amplitude))
            .collect()
    }
}

fn tensor<T>(data: &[T], layout: AttentionLayout) -> AttentionTensor<&[T]> {
    AttentionTensor::new(data, layout)
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[test]
fn one_key_gives_its_value() {
    let mut rng = Rng(1);
    let (n_q, d) = (5, 64);
    let q_layout = AttentionLayout::contiguous(1, n_q, 2, d);
    let kv_layout = AttentionLayout::contiguous(1, 1, 2, d);
    let q: Vec<bf16> = rng.fill(q_layout.span().unwrap(), 1.0);
    let k: Vec<bf16> = rng.fill(kv_layout.span().unwrap(), 1.0);
    let v: Vec<bf16> = rng.fill(kv_layout.span().unwrap(), 1.0);
    let (q, k, v) = (
        tensor(&q, q_layout),
        tensor(&k, kv_layout),
        tensor(&v, kv_layout),
    );
    let scale = 0.125;
    let (out, lse) = attention_f64(&q, &k, &v, scale).unwrap();
    let naive = attention_same_precision(&q, &k, &v, scale as f32).unwrap();
    for n in 0..n_q {
        for h in 0..2 {
            let v_row: Vec<f64> = (0..d)
                .map(|i| f64::from(v.data[h * d + i].to_f32()))
                .collect();
            let o = q_layout.index(0, n, h, 0);
            assert_eq!(&out[o..o + d], &v_row[..], "f64 row {n} head {h}");
            let naive_row: Vec<f64> = naive[o..o + d]
                .iter()
                .map(|x| f64::from(x.to_f32()))
                .collect();
            assert_eq!(naive_row, v_row, "same-precision row {n} head {h}");
            let dot: f64 = (0..d)
                .map(|i| f64::from(q.data[o + i].to_f32()) * f64::from(k.data[h * d + i].to_f32()))
                .sum();
            assert!(
                (lse[h * n_q + n] - dot * scale).abs() < 1e-12,
                "lse = the one scaled score"
            );
        }
    }
}

#[test]
fn equal_scores_give_the_mean_of_v() {
    let mut rng = Rng(2);
    let (n_kv, d) = (7, 128);
    let layout = AttentionLayout::contiguous(1, n_kv, 1, d);
    let q: Vec<f16> = rng.fill(d, 1.0);
    let key: Vec<f16> = rng.fill(d, 1.0);
    // Every key the same vector: every score equal.
    let k: Vec<f16> = (0..n_kv).flat_map(|_| key.iter().copied()).collect();
    let v: Vec<f16> = rng.fill(n_kv * d, 1.0);
    let q_layout = AttentionLayout::contiguous(1, 1, 1, d);
    let (out, lse) = attention_f64(
        &tensor(&q, q_layout),
        &tensor(&k, layout),
        &tensor(&v, layout),
        0.3,
    )
    .unwrap();
    for i in 0..d {
        let mean = (0..n_kv)
            .map(|j| f64::from(v[j * d + i].to_f32()))
            .sum::<f64>()
            / n_kv as f64;
        assert!(
            (out[i] - mean).abs() < 1e-12,
            "d {i}: {} vs mean {mean}",
            out[i]
        );
    }
    let score: f64 = q
        .iter()
        .zip(&key)
        .map(|(a, b)| f64::from(a.to_f32()) * f64::from(b.to_f32()))
        .sum::<f64>()
        * 0.3;
    assert!((lse[0] - (score + (n_kv as f64).ln())).abs() < 1e-12);
}

#[test]
fn lse_and_weights_of_known_scores() {
    // q = e0, k_j = c_j e0: scores are scale * c_j, exactly.
    let d = 64;
    let c = [0.0f32, 1.0, 2.0, -1.0];
    let scale = 0.5;
    let mut q = vec![bf16::ZERO; d];
    q[0] = bf16::ONE;
    let mut k = vec![bf16::ZERO; c.len() * d];
    let mut v = vec![bf16::ZERO; c.len() * d];
    for (j, &cj) in c.iter().enumerate() {
        k[j * d] = bf16::from_f32(cj);
        v[j * d + 3] = bf16::from_f32(j as f32); // out[3] = E[j]
    }
    let q_layout = AttentionLayout::contiguous(1, 1, 1, d);
    let kv_layout = AttentionLayout::contiguous(1, c.len(), 1, d);
    let (out, lse) = attention_f64(
        &tensor(&q, q_layout),
        &tensor(&k, kv_layout),
        &tensor(&v, kv_layout),
        scale,
    )
    .unwrap();
    let exps: Vec<f64> = c.iter().map(|&cj| (scale * f64::from(cj)).exp()).collect();
    let sum: f64 = exps.iter().sum();
    assert!(
        (lse[0] - sum.ln()).abs() < 1e-12,
        "lse {} vs {}",
        lse[0],
        sum.ln()
    );
    let mean_j: f64 = exps
        .iter()
        .enumerate()
        .map(|(j, e)| j as f64 * e)
        .sum::<f64>()
        / sum;
    assert!((out[3] - mean_j).abs() < 1e-12);
    assert!(out.iter().enumerate().all(|(i, &x)| i == 3 || x == 0.0));
}

fn same_precision_error<T: AttentionElement>(seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let (b, n_q, n_kv, h, d) = (2, 37, 53, 3, 64);
    let q_layout = AttentionLayout::contiguous(b, n_q, h, d);
    let kv_layout = AttentionLayout::contiguous(b, n_kv, h, d);
    let q: Vec<T> = rng.fill(q_layout.span().unwrap(), 2.0);
    let k: Vec<T> = rng.fill(kv_layout.span().unwrap(), 2.0);
    let v: Vec<T> = rng.fill(kv_layout.span().unwrap(), 1.0);
    let (q, k, v) = (
        tensor(&q, q_layout),
        tensor(&k, kv_layout),
        tensor(&v, kv_layout),
    );
    let scale = default_scale(d);
    let (exact, _) = attention_f64(&q, &k, &v, f64::from(scale)).unwrap();
    let naive: Vec<f64> = attention_same_precision(&q, &k, &v, scale)
        .unwrap()
        .iter()
        .map(|x| f64::from(x.to_f32()))
        .collect();
    rel_err(&naive, &exact)
}

#[test]
fn same_precision_reference_is_close_to_f64_and_not_equal() {
    // Rounding P and the output to 8 (bf16) or 11 (f16) significant bits
    // gives a relative error near their unit roundoff, not zero.
    let bf = same_precision_error::<bf16>(3);
    assert!(bf > 2e-4 && bf < 8e-3, "bf16 relative error {bf}");
    let hf = same_precision_error::<f16>(4);
    assert!(hf > 3e-5 && hf < 1e-3, "f16 relative error {hf}");
}

#[test]
fn packed_qkv_read_through_strides_equals_contiguous_copies() {
    let mut rng = Rng(5);
    let (b, n, h, d) = (2, 9, 3, 64);
    let packed: Vec<bf16> = rng.fill(b * n * 3 * h * d, 1.5);
    let part = |p: QkvPart| AttentionLayout::packed_qkv(b, n, h, d, p);
    let dense = AttentionLayout::contiguous(b, n, h, d);
    let copy = |layout: AttentionLayout| -> Vec<bf16> {
        let mut out = Vec::new();
        for bi in 0..b {
            for ni in 0..n {
                for hi in 0..h {
                    let s = layout.index(bi, ni, hi, 0);
                    out.extend_from_slice(&packed[s..s + d]);
                }
            }
        }
        out
    };
    let (qc, kc, vc) = (
        copy(part(QkvPart::Q)),
        copy(part(QkvPart::K)),
        copy(part(QkvPart::V)),
    );
    // The copies differ from each other: the views do select different thirds.
    assert!(qc != kc && kc != vc);
    let strided = [
        tensor(&packed, part(QkvPart::Q)),
        tensor(&packed, part(QkvPart::K)),
        tensor(&packed, part(QkvPart::V)),
    ];
    let copied = [tensor(&qc, dense), tensor(&kc, dense), tensor(&vc, dense)];
    let scale = 0.2;
    assert_eq!(
        attention_f64(&strided[0], &strided[1], &strided[2], scale).unwrap(),
        attention_f64(&copied[0], &copied[1], &copied[2], scale).unwrap()
    );
    assert_eq!(
        attention_same_precision(&strided[0], &strided[1], &strided[2], scale as f32).unwrap(),
        attention_same_precision(&copied[0], &copied[1], &copied[2], scale as f32).unwrap()
    );
    // Heads-major [B, H, N, D] through strides too.
    let mut bhnd = vec![bf16::ZERO; qc.len()];
    for bi in 0..b {
        for ni in 0..n {
            for hi in 0..h {
                let src = dense.index(bi, ni, hi, 0);
                let dst = ((bi * h + hi) * n + ni) * d;
                bhnd[dst..dst + d].copy_from_slice(&qc[src..src + d]);
            }
        }
    }
    let heads_major = AttentionLayout::heads_outer(b, n, h, d);
    assert_eq!(
        attention_f64(&tensor(&bhnd, heads_major), &copied[1], &copied[2], scale).unwrap(),
        attention_f64(&copied[0], &copied[1], &copied[2], scale).unwrap()
    );
}

#[test]
fn rms_norm_matches_the_direct_formula_and_skips_dummy_heads() {
    let mut rng = Rng(6);
    let rows = QkvRows {
        tokens: 4,
        heads_padded: 5,
        heads_real: 3,
        head_dim: 16,
    };
    let eps = 1e-6;
    let before: Vec<bf16> = rng.fill(rows.tokens * rows.row_len(), 3.0);
    let q_weight: Vec<bf16> = rng.fill(rows.heads_padded * rows.head_dim, 2.0);
    let k_weight: Vec<bf16> = rng.fill(rows.heads_padded * rows.head_dim, 2.0);
    let mut after = before.clone();
    qk_rms_norm_reference(&mut after, &rows, &q_weight, &k_weight, eps).unwrap();
    let width = rows.width();
    let part_len = rows.heads_padded * rows.head_dim;
    for t in 0..rows.tokens {
        for (part, weight) in [&q_weight, &k_weight].into_iter().enumerate() {
            let start = t * rows.row_len() + part * part_len;
            let x: Vec<f64> = before[start..start + width]
                .iter()
                .map(|e| f64::from(e.to_f32()))
                .collect();
            let rms = (x.iter().map(|e| e * e).sum::<f64>() / width as f64 + f64::from(eps)).sqrt();
            for i in 0..width {
                let want = f64::from(weight[i].to_f32()) * x[i] / rms;
                let got = f64::from(after[start + i].to_f32());
                // Two roundings to bf16 (8 significant bits).
                assert!(
                    (got - want).abs() <= want.abs() * 2f64.powi(-7),
                    "token {t} part {part} [{i}]: {got} vs {want}"
                );
            }
            assert_eq!(
                &after[start + width..start + part_len],
                &before[start + width..start + part_len],
                "dummy heads"
            );
        }
        let v = t * rows.row_len() + 2 * part_len;
        assert_eq!(
            &after[v..v + part_len],
            &before[v..v + part_len],
            "v untouched"
        );
    }
    assert_ne!(after, before);
}

// ---- host-side checks of the GPU entry points ----

fn ok_case() -> ([AttentionLayout; 4], [usize; 4]) {
    let q = AttentionLayout::packed_qkv(2, 65, 3, 64, QkvPart::Q);
    let k = AttentionLayout::packed_qkv(2, 65, 3, 64, QkvPart::K);
    let v = AttentionLayout::packed_qkv(2, 65, 3, 64, QkvPart::V);
    let out = AttentionLayout::contiguous(2, 65, 3, 64);
    let packed = 2 * 65 * 3 * 3 * 64;
    (
        [q, k, v, out],
        [packed, packed, packed, out.span().unwrap()],
    )
}

fn check(
    layouts: [AttentionLayout; 4],
    lens: [usize; 4],
    lse: Option<usize>,
    scale: f32,
) -> Result<()> {
    check_flash_attention(
        &layouts[0],
        &layouts[1],
        &layouts[2],
        &layouts[3],
        lens,
        lse,
        scale,
    )
}

fn is_invalid_shape(r: Result<()>) -> bool {
    matches!(r, Err(Error::InvalidShape(_)))
}

/// An `InvalidShape` whose message names `needle`.
fn invalid_because(r: Result<()>, needle: &str) -> bool {
    matches!(&r, Err(Error::InvalidShape(m)) if m.contains(needle)) || {
        eprintln!("expected InvalidShape mentioning {needle:?}, got {r:?}");
        false
    }
}

#[test]
fn valid_packed_and_cross_attention_pass() {
    let (layouts, lens) = ok_case();
    check(layouts, lens, Some(2 * 3 * 65), 0.125).unwrap();
    // Nq != Nkv.
    let q = AttentionLayout::contiguous(3, 5, 2, 128);
    let kv = AttentionLayout::contiguous(3, 1025, 2, 128);
    let lens = [
        q.span().unwrap(),
        kv.span().unwrap(),
        kv.span().unwrap(),
        q.span().unwrap(),
    ];
    check([q, kv, kv, q], lens, None, 0.1).unwrap();
}

#[test]
fn head_dim_without_kernel_is_unsupported() {
    let l = AttentionLayout::contiguous(1, 8, 2, 96);
    let n = l.span().unwrap();
    assert!(matches!(
        check([l; 4], [n; 4], None, 0.1),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn empty_dimension_is_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[1].tokens = 0;
    layouts[2].tokens = 0;
    assert!(is_invalid_shape(check(layouts, lens, None, 0.1)));
}

#[test]
fn mismatched_heads_are_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[1].heads = 2;
    assert!(is_invalid_shape(check(layouts, lens, None, 0.1)));
}

#[test]
fn k_and_v_token_mismatch_is_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[2].tokens = 64;
    assert!(is_invalid_shape(check(layouts, lens, None, 0.1)));
}

#[test]
fn output_shape_mismatch_is_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[3] = AttentionLayout::contiguous(2, 64, 3, 64);
    assert!(is_invalid_shape(check(layouts, lens, None, 0.1)));
}

#[test]
fn unaligned_stride_is_rejected() {
    let (mut layouts, mut lens) = ok_case();
    layouts[3].strides = [65 * 208, 208, 68]; // head rows only 8-byte aligned
    lens[3] = layouts[3].span().unwrap();
    assert!(invalid_because(
        check(layouts, lens, None, 0.1),
        "16-byte aligned"
    ));
}

#[test]
fn unaligned_offset_is_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[0].offset = 4;
    assert!(invalid_because(
        check(layouts, lens, None, 0.1),
        "16-byte aligned"
    ));
}

#[test]
fn stride_of_a_size_one_dim_is_ignored() {
    let q = AttentionLayout {
        strides: [3, 128, 64], // batch 1: its stride is never used
        ..AttentionLayout::contiguous(1, 4, 2, 64)
    };
    let n = q.span().unwrap();
    check([q; 4], [n; 4], None, 0.1).unwrap();
}

#[test]
fn overlapping_output_is_rejected() {
    let (mut layouts, mut lens) = ok_case();
    layouts[3].strides[2] = 0; // every head writes the same row
    lens[3] = layouts[3].span().unwrap();
    assert!(invalid_because(check(layouts, lens, None, 0.1), "overlap"));
    // A token stride shorter than a token's heads also overlaps.
    layouts[3].strides = [65 * 3 * 64, 128, 64];
    lens[3] = layouts[3].span().unwrap();
    assert!(invalid_because(check(layouts, lens, None, 0.1), "overlap"));
    // 3 heads of 64 span 192 elements: a token stride of 136 overlaps too,
    // though it passes the last head's first element.
    layouts[3].strides = [65 * 192, 136, 64];
    lens[3] = layouts[3].span().unwrap();
    assert!(invalid_because(check(layouts, lens, None, 0.1), "overlap"));
    // Exactly 192 does not.
    layouts[3].strides = [65 * 192, 192, 64];
    lens[3] = layouts[3].span().unwrap();
    check(layouts, lens, None, 0.1).unwrap();
}

#[test]
fn short_input_buffer_is_rejected() {
    let (layouts, mut lens) = ok_case();
    lens[1] = layouts[1].span().unwrap() - 1; // k ends before v's last third
    assert!(check(layouts, [lens[0], lens[1] + 1, lens[2], lens[3]], None, 0.1).is_ok());
    assert!(matches!(
        check(layouts, lens, None, 0.1),
        Err(Error::BufferTooShort { what: "k", .. })
    ));
}

#[test]
fn short_output_buffer_is_rejected() {
    let (layouts, mut lens) = ok_case();
    lens[3] -= 8;
    assert!(matches!(
        check(layouts, lens, None, 0.1),
        Err(Error::BufferTooShort { what: "out", .. })
    ));
}

#[test]
fn short_lse_buffer_is_rejected() {
    let (layouts, lens) = ok_case();
    assert!(matches!(
        check(layouts, lens, Some(2 * 3 * 65 - 1), 0.1),
        Err(Error::BufferTooShort { what: "lse", .. })
    ));
}

#[test]
fn index_overflow_is_rejected() {
    let (mut layouts, lens) = ok_case();
    layouts[0].strides[0] = usize::MAX / 2;
    assert!(invalid_because(check(layouts, lens, None, 0.1), "overflow"));
}

#[test]
fn too_many_heads_for_the_grid_are_rejected() {
    let l = AttentionLayout::contiguous(1, 1, 65_536, 64);
    let n = l.span().unwrap();
    assert!(invalid_because(
        check([l; 4], [n; 4], None, 0.1),
        "at most 65535"
    ));
}

/// Token counts stay in the kernels' `int` with room to round up to a
/// whole tile: k and v of 2^31 - 128 tokens (one row read over and over
/// through a zero token stride) pass, one more does not; so does a batch
/// past gridDim.z.
#[test]
fn token_counts_past_the_kernels_int_and_batches_past_the_grid_are_rejected() {
    let (mut layouts, lens) = ok_case();
    for keys in [MAX_TOKENS, MAX_TOKENS + 1] {
        for kv in &mut layouts[1..3] {
            kv.tokens = keys;
            kv.strides[1] = 0;
        }
        let result = check(layouts, lens, None, 0.1);
        if keys == MAX_TOKENS {
            result.unwrap();
        } else {
            assert!(invalid_because(result, "at most 2147483520"));
        }
    }
    let l = AttentionLayout::contiguous(65_536, 1, 1, 64);
    let n = l.span().unwrap();
    assert!(invalid_because(
        check([l; 4], [n; 4], None, 0.1),
        "batch 65536"
    ));
}

#[test]
fn non_finite_scale_is_rejected() {
    let (layouts, lens) = ok_case();
    assert!(invalid_because(
        check(layouts, lens, None, f32::NAN),
        "scale"
    ));
    assert!(invalid_because(
        check(layouts, lens, None, f32::INFINITY),
        "scale"
    ));
}

#[test]
fn cpu_reference_rejects_bad_rows_and_short_buffers() {
    let l = AttentionLayout::contiguous(1, 4, 2, 64);
    let data = vec![bf16::ONE; l.span().unwrap()];
    let t = tensor(&data, l);
    assert!(matches!(
        attention_row_f64(&t, &t, &t, (0, 4, 0), 0.1),
        Err(Error::InvalidShape(_))
    ));
    let short = tensor(&data[1..], l);
    assert!(matches!(
        attention_f64(&t, &short, &t, 0.1),
        Err(Error::BufferTooShort { what: "k", .. })
    ));
}

const NVLM_ROWS: QkvRows = QkvRows {
    tokens: 1025,
    heads_padded: 32,
    heads_real: 25,
    head_dim: 128,
};

fn check_norm(rows: QkvRows, qkv_len: usize, weights: [usize; 2], eps: f32) -> Result<()> {
    check_qk_rms_norm(&rows, qkv_len, weights, eps)
}

#[test]
fn rms_norm_checks_accept_nvlm_padded_rows() {
    check_norm(NVLM_ROWS, 1025 * 3 * 4096, [4096, 3200], 1e-6).unwrap();
}

#[test]
fn rms_norm_rejects_more_real_than_padded_heads() {
    let rows = QkvRows {
        heads_real: 33,
        ..NVLM_ROWS
    };
    assert!(is_invalid_shape(check_norm(
        rows,
        usize::MAX,
        [usize::MAX; 2],
        1e-6
    )));
}

#[test]
fn rms_norm_rejects_head_dim_not_multiple_of_8() {
    let rows = QkvRows {
        head_dim: 20,
        ..NVLM_ROWS
    };
    assert!(matches!(
        check_norm(rows, usize::MAX, [usize::MAX; 2], 1e-6),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn rms_norm_rejects_short_qkv_and_weights() {
    assert!(matches!(
        check_norm(NVLM_ROWS, 1025 * 3 * 4096 - 1, [4096; 2], 1e-6),
        Err(Error::BufferTooShort { what: "qkv", .. })
    ));
    assert!(matches!(
        check_norm(NVLM_ROWS, 1025 * 3 * 4096, [4096, 3199], 1e-6),
        Err(Error::BufferTooShort {
            what: "k weight",
            ..
        })
    ));
    assert!(matches!(
        check_norm(NVLM_ROWS, 1025 * 3 * 4096, [3199, 4096], 1e-6),
        Err(Error::BufferTooShort {
            what: "q weight",
            ..
        })
    ));
}

/// Shapes whose element counts overflow are an `InvalidShape`, not a
/// panic on overflow.
#[test]
fn rms_norm_rejects_rows_whose_sizes_overflow() {
    for rows in [
        QkvRows {
            head_dim: 1 << 62,
            ..NVLM_ROWS
        },
        QkvRows {
            heads_padded: usize::MAX,
            ..NVLM_ROWS
        },
        QkvRows {
            tokens: MAX_TOKENS + 1,
            ..NVLM_ROWS
        },
    ] {
        assert!(
            invalid_because(
                check_norm(rows, usize::MAX, [usize::MAX; 2], 1e-6),
                "overflow"
            ),
            "{rows:?}"
        );
    }
}

#[test]
fn rms_norm_rejects_bad_eps_and_empty_rows() {
    assert!(is_invalid_shape(check_norm(
        NVLM_ROWS,
        usize::MAX,
        [4096; 2],
        f32::NAN
    )));
    assert!(is_invalid_shape(check_norm(
        NVLM_ROWS,
        usize::MAX,
        [4096; 2],
        -1.0
    )));
    for rows in [
        QkvRows {
            tokens: 0,
            ..NVLM_ROWS
        },
        QkvRows {
            heads_real: 0,
            ..NVLM_ROWS
        },
        QkvRows {
            head_dim: 0,
            ..NVLM_ROWS
        },
    ] {
        assert!(
            invalid_because(check_norm(rows, usize::MAX, [4096; 2], 1e-6), "at least 1"),
            "{rows:?}"
        );
    }
}

/// With one token the softmax has one key, so the sub-layer is
/// `proj(round(v)) + bias` with v the value rows of the qkv product: checks
/// which third of the qkv rows the reference attends with, that the dummy
/// heads' columns are zero, and the proj indexing.
#[test]
fn block_reference_with_one_token_is_proj_of_v() {
    let mut rng = Rng(7);
    let cfg = AttentionBlockConfig {
        hidden: 40,
        heads: 2,
        heads_padded: 3,
        head_dim: 64,
        qk_norm_eps: Some(1e-6),
        qkv_bias: true,
        proj_bias: true,
        proj_input_heads: 3,
    };
    let (c, pd) = (cfg.hidden, cfg.heads_padded * cfg.head_dim);
    let qkv_w: Vec<bf16> = rng.fill(cfg.qkv_width() * c, 0.3);
    let qkv_b: Vec<bf16> = rng.fill(cfg.qkv_width(), 0.3);
    let norm: Vec<bf16> = rng.fill(pd, 1.0);
    let proj_w: Vec<bf16> = rng.fill(c * cfg.proj_input(), 0.3);
    let proj_b: Vec<bf16> = rng.fill(c, 0.3);
    let x: Vec<bf16> = rng.fill(2 * c, 1.0); // batch 2, 1 token each
    let weights = AttentionBlockWeights {
        qkv_weight: &qkv_w[..],
        qkv_bias: Some(&qkv_b[..]),
        q_norm: Some(&norm[..]),
        k_norm: Some(&norm[..]),
        proj_weight: &proj_w[..],
        proj_bias: Some(&proj_b[..]),
    };
    let got = attention_block_reference(&cfg, &weights, &x, (2, 1)).unwrap();
    let f = |t: bf16| f64::from(t.to_f32());
    for r in 0..2 {
        // v = the last third of the qkv rows; only the real heads' columns.
        let mut attended = vec![0f64; cfg.proj_input()];
        for (j, a) in attended
            .iter_mut()
            .enumerate()
            .take(cfg.heads * cfg.head_dim)
        {
            let row = 2 * pd + j;
            let dot: f64 = (0..c)
                .map(|i| f(x[r * c + i]) * f(qkv_w[row * c + i]))
                .sum();
            let v = bf16::from_f32((dot + f(qkv_b[row])) as f32);
            *a = f(v);
        }
        for o in 0..c {
            let want: f64 = (0..cfg.proj_input())
                .map(|j| attended[j] * f(proj_w[o * cfg.proj_input() + j]))
                .sum::<f64>()
                + f(proj_b[o]);
            let g = got[r * c + o];
            assert!(
                (g - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "row {r} out {o}: {g} vs {want}"
            );
        }
    }
}
