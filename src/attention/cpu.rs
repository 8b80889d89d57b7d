//! CPU references for the attention kernels: exact attention in f64, the
//! "naive same-precision" attention that FlashAttention's error rule
//! compares against, and InternViT-6B's qk-RMSNorm.

use super::block::layouts;
use super::{
    AttentionBlockConfig, AttentionBlockWeights, AttentionElement, AttentionLayout,
    AttentionTensor, QkvRows, check_attention_block, check_inputs, check_qk_rms_norm,
    default_scale,
};
use crate::error::{Error, Result};

type Input<'a, T> = AttentionTensor<&'a [T]>;

fn check_views<T>(q: &Input<'_, T>, k: &Input<'_, T>, v: &Input<'_, T>) -> Result<()> {
    check_inputs(
        &q.layout,
        &k.layout,
        &v.layout,
        [q.data.len(), k.data.len(), v.data.len()],
    )
}

fn check_row(q: &AttentionLayout, b: usize, n: usize, h: usize) -> Result<()> {
    if b >= q.batch || n >= q.tokens || h >= q.heads {
        return Err(Error::InvalidShape(format!(
            "row (batch {b}, token {n}, head {h}) outside q [B {}, N {}, H {}]",
            q.batch, q.tokens, q.heads
        )));
    }
    Ok(())
}

fn row_f32<T: AttentionElement>(
    t: &Input<'_, T>,
    b: usize,
    n: usize,
    h: usize,
) -> impl Iterator<Item = f32> {
    let start = t.layout.index(b, n, h, 0);
    t.data[start..start + t.layout.head_dim]
        .iter()
        .map(|x| x.to_f32())
}

/// Exact attention of query row `(b, n, h)`: `softmax(q·Kᵀ·scale)·V` in
/// f64 over the inputs' values, and the natural-log sum-exp of the scaled
/// scores, `ln Σ_j exp(scale · q·k_j)`.
pub fn attention_row_f64<T: AttentionElement>(
    q: &Input<'_, T>,
    k: &Input<'_, T>,
    v: &Input<'_, T>,
    (b, n, h): (usize, usize, usize),
    scale: f64,
) -> Result<(Vec<f64>, f64)> {
    check_views(q, k, v)?;
    check_row(&q.layout, b, n, h)?;
    let q_row: Vec<f64> = row_f32(q, b, n, h).map(f64::from).collect();
    let scores: Vec<f64> = (0..k.layout.tokens)
        .map(|j| {
            let dot: f64 = row_f32(k, b, j, h)
                .zip(&q_row)
                .map(|(x, y)| f64::from(x) * y)
                .sum();
            dot * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut out = vec![0f64; q.layout.head_dim];
    for (j, w) in weights.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(row_f32(v, b, j, h)) {
            *o += w * f64::from(x);
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
    Ok((out, max + sum.ln()))
}

/// Query row `(b, n, h)` computed the naive way in the inputs' precision,
/// the baseline of FlashAttention's error rule (its `attention_ref` without
/// upcast): scores in f32 (f32 products and sum), softmax in f32, the
/// normalised probabilities rounded to `T`, `P·V` accumulated in f32, the
/// output rounded to `T`.
pub fn attention_row_same_precision<T: AttentionElement>(
    q: &Input<'_, T>,
    k: &Input<'_, T>,
    v: &Input<'_, T>,
    (b, n, h): (usize, usize, usize),
    scale: f32,
) -> Result<Vec<T>> {
    check_views(q, k, v)?;
    check_row(&q.layout, b, n, h)?;
    let q_row: Vec<f32> = row_f32(q, b, n, h).collect();
    let scores: Vec<f32> = (0..k.layout.tokens)
        .map(|j| {
            row_f32(k, b, j, h)
                .zip(&q_row)
                .fold(0f32, |acc, (x, y)| acc + x * y)
                * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = weights.iter().sum();
    let mut out = vec![0f32; q.layout.head_dim];
    for (j, w) in weights.iter().enumerate() {
        let p = T::from_f32(w / sum).to_f32();
        for (o, x) in out.iter_mut().zip(row_f32(v, b, j, h)) {
            *o += p * x;
        }
    }
    Ok(out.into_iter().map(T::from_f32).collect())
}

/// [`attention_row_f64`] for every row: the output as a contiguous
/// `[B, Nq, H, D]` vector and the LSE as `[B, H, Nq]`.
pub fn attention_f64<T: AttentionElement>(
    q: &Input<'_, T>,
    k: &Input<'_, T>,
    v: &Input<'_, T>,
    scale: f64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_views(q, k, v)?;
    let l = q.layout;
    let mut out = vec![0f64; l.batch * l.tokens * l.heads * l.head_dim];
    let mut lse = vec![0f64; l.batch * l.heads * l.tokens];
    let dense = AttentionLayout::contiguous(l.batch, l.tokens, l.heads, l.head_dim);
    for b in 0..l.batch {
        for n in 0..l.tokens {
            for h in 0..l.heads {
                let (row, row_lse) = attention_row_f64(q, k, v, (b, n, h), scale)?;
                let start = dense.index(b, n, h, 0);
                out[start..start + l.head_dim].copy_from_slice(&row);
                lse[(b * l.heads + h) * l.tokens + n] = row_lse;
            }
        }
    }
    Ok((out, lse))
}

/// [`attention_row_same_precision`] for every row, as a contiguous
/// `[B, Nq, H, D]` vector.
pub fn attention_same_precision<T: AttentionElement>(
    q: &Input<'_, T>,
    k: &Input<'_, T>,
    v: &Input<'_, T>,
    scale: f32,
) -> Result<Vec<T>> {
    check_views(q, k, v)?;
    let l = q.layout;
    let mut out = Vec::with_capacity(l.batch * l.tokens * l.heads * l.head_dim);
    for b in 0..l.batch {
        for n in 0..l.tokens {
            for h in 0..l.heads {
                out.extend(attention_row_same_precision(q, k, v, (b, n, h), scale)?);
            }
        }
    }
    Ok(out)
}

/// InternViT-6B's qk-RMSNorm, in place on packed qkv rows, as HF's
/// `InternRMSNorm.forward` computes it (matched against the InternVL/NVLM
/// `modeling_intern_vit.py` source):
/// ```text
/// input_dtype = hidden_states.dtype
/// hidden_states = hidden_states.to(torch.float32)
/// variance = hidden_states.pow(2).mean(-1, keepdim=True)
/// hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
/// return self.weight * hidden_states.to(input_dtype)
/// ```
/// with the weight in the model dtype, so the last product is dtype × dtype
/// rounded once to the dtype. The variance spans the first `heads_real`
/// heads only (NVLM's padded checkpoint divides by 3200, not 4096); its
/// mean of x² is formed in f64 and rounded to f32, the value any f32
/// summation order approximates. (When apex is installed, HF swaps in
/// apex's FusedRMSNorm, which rounds once at the end instead; the model
/// was trained either way, and this follows the plain PyTorch code.)
/// Dummy heads and v are left untouched.
pub fn qk_rms_norm_reference<T: AttentionElement>(
    qkv: &mut [T],
    rows: &QkvRows,
    q_weight: &[T],
    k_weight: &[T],
    eps: f32,
) -> Result<()> {
    check_qk_rms_norm(rows, qkv.len(), [q_weight.len(), k_weight.len()], eps)?;
    let width = rows.width();
    for token in 0..rows.tokens {
        for (part, weight) in [q_weight, k_weight].into_iter().enumerate() {
            let start = token * rows.row_len() + part * rows.heads_padded * rows.head_dim;
            let x = &mut qkv[start..start + width];
            let mean_sq =
                x.iter().map(|e| f64::from(e.to_f32()).powi(2)).sum::<f64>() / width as f64;
            let inv_rms = 1.0 / (mean_sq as f32 + eps).sqrt();
            for (e, w) in x.iter_mut().zip(weight) {
                let y = T::from_f32(e.to_f32() * inv_rms).to_f32();
                *e = T::from_f32(w.to_f32() * y);
            }
        }
    }
    Ok(())
}

/// InternViT's attention sub-layer (see [`super::AttentionBlock`]) on the
/// CPU, rounding to `T` where the GPU path stores a tensor in `T`: the qkv
/// rows (after the f64 product and bias), the qk-RMSNorm
/// ([`qk_rms_norm_reference`]) and the attention output (f64 attention);
/// the proj product and bias in f64. Returns `[batch·tokens, hidden]`.
pub fn attention_block_reference<T: AttentionElement>(
    cfg: &AttentionBlockConfig,
    weights: &AttentionBlockWeights<&[T]>,
    x: &[T],
    (batch, tokens): (usize, usize),
) -> Result<Vec<f64>> {
    let rows = batch * tokens;
    let (qkv_width, proj_input) = (cfg.qkv_width(), cfg.proj_input());
    check_attention_block(
        cfg,
        &weights.lens(|w| w.len()),
        (batch, tokens),
        x.len(),
        rows * cfg.hidden,
        (rows * qkv_width, rows * proj_input),
    )?;
    let f = |t: &T| f64::from(t.to_f32());
    // y[r][j] = x[r] · w[j] + bias[j], f64.
    let linear = |x: &[f64], w: &[T], bias: Option<&[T]>, n: usize, k: usize| -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let dot: f64 = x[r * k..(r + 1) * k]
                    .iter()
                    .zip(&w[j * k..(j + 1) * k])
                    .map(|(a, b)| a * f(b))
                    .sum();
                y[r * n + j] = dot + bias.map_or(0.0, |b| f(&b[j]));
            }
        }
        y
    };
    let x64: Vec<f64> = x.iter().map(f).collect();
    let mut qkv: Vec<T> = linear(
        &x64,
        weights.qkv_weight,
        weights.qkv_bias,
        qkv_width,
        cfg.hidden,
    )
    .into_iter()
    .map(|v| T::from_f32(v as f32))
    .collect();
    if let (Some(eps), Some(q_norm), Some(k_norm)) =
        (cfg.qk_norm_eps, weights.q_norm, weights.k_norm)
    {
        let norm_rows = QkvRows {
            tokens: rows,
            heads_padded: cfg.heads_padded,
            heads_real: cfg.heads,
            head_dim: cfg.head_dim,
        };
        qk_rms_norm_reference(&mut qkv, &norm_rows, q_norm, k_norm, eps)?;
    }
    let (q, k, v, o) = layouts(cfg, batch, tokens);
    let view = |layout| AttentionTensor::new(&qkv[..], layout);
    let (q, k, v) = (view(q), view(k), view(v));
    let scale = f64::from(default_scale(cfg.head_dim));
    // The dummy heads' columns stay zero.
    let mut attended = vec![0f64; rows * proj_input];
    for b in 0..batch {
        for n in 0..tokens {
            for h in 0..cfg.heads {
                let (row, _) = attention_row_f64(&q, &k, &v, (b, n, h), scale)?;
                let at = o.index(b, n, h, 0);
                for (dst, value) in attended[at..at + cfg.head_dim].iter_mut().zip(row) {
                    *dst = f64::from(T::from_f32(value as f32).to_f32());
                }
            }
        }
    }
    Ok(linear(
        &attended,
        weights.proj_weight,
        weights.proj_bias,
        cfg.hidden,
        proj_input,
    ))
}
