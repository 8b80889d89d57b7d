//! Row-major GEMMs through cuBLASLt (cudarc's `cublaslt`), in PyTorch's
//! `nn.Linear` convention: `y[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N])`, with
//! `w` in the checkpoint's `[out, in]` layout, no transposes on the host.
//!
//! cuBLASLt is column-major. A row-major `[R, C]` matrix is a column-major
//! `C × R` one with the same leading dimension, so the row-major product is
//! the column-major `yᵀ (N × M) = w (N × K, stored as K × N, transposed) ·
//! xᵀ (K × M)`: A = w with `transa`, B = x, m = N, n = M, k = K,
//! lda = ldb = K, ldc = N. cuBLASLt's bias is indexed by the row of the
//! column-major result, i.e. by N: the output feature, as `nn.Linear`.
//!
//! Every shape is checked by [`check_linear`] and every operand address by
//! [`check_operand_alignment`] (pure functions) before the call; cuBLASLt is
//! loaded at run time, and a machine without libcublasLt gets
//! [`Error::CudaUnavailable`] from [`Gemm::new`].

use crate::cuda::{Gpu, check_buffer_context};
use crate::dtype::TensorElement;
use crate::error::{Error, Result};
use cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig, Workspace};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of x and y (tokens).
    pub m: usize,
    /// Output features (rows of w).
    pub n: usize,
    /// Input features.
    pub k: usize,
}

/// What cuBLASLt applies after the product (and the bias, when given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Relu,
    /// cuBLASLt's GELU (`CUBLASLT_EPILOGUE_GELU[_BIAS]`). Not torch's exact
    /// erf GELU: `tests/gpu_projector.rs` measures which formula it is.
    CublasGelu,
}

/// Checks one [`Gemm::linear`] call: non-zero dims that cuBLASLt's 32-bit
/// sizes hold, `x` and `w` of exactly `m·k` and `n·k` elements, a bias of
/// exactly `n`, and an output of at least `m·n`.
pub fn check_linear(
    s: LinearShape,
    x_len: usize,
    w_len: usize,
    bias_len: Option<usize>,
    y_len: usize,
) -> Result<()> {
    if s.m == 0 || s.n == 0 || s.k == 0 {
        return Err(Error::InvalidShape(format!(
            "GEMM {s:?}: zero-sized dimension"
        )));
    }
    if [s.m, s.n, s.k].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::InvalidShape(format!(
            "GEMM {s:?}: a dimension exceeds i32::MAX"
        )));
    }
    let exact = |what: &str, len: usize, need: usize| -> Result<()> {
        if len == need {
            Ok(())
        } else {
            Err(Error::InvalidShape(format!(
                "GEMM {s:?}: {what} has {len} elements, expected {need}"
            )))
        }
    };
    exact("x [m, k]", x_len, s.m * s.k)?;
    exact("w [n, k]", w_len, s.n * s.k)?;
    if let Some(len) = bias_len {
        exact("bias [n]", len, s.n)?;
    }
    if y_len < s.m * s.n {
        return Err(Error::BufferTooShort {
            what: "GEMM output y [m, n] (elements)",
            len: y_len,
            needed: s.m * s.n,
        });
    }
    Ok(())
}

/// The alignment, in bytes, [`Gemm::linear`] requires of every operand's
/// address. cuBLASLt's heuristic assumes 256-byte-aligned pointers unless
/// told otherwise (`CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES`,
/// default 256) and cudarc does not tell it, so a less aligned operand (a
/// view starting inside a buffer) could get a kernel that fails or faults.
/// Whole cudarc allocations are aligned far beyond this.
pub const OPERAND_ALIGNMENT: u64 = 256;

/// Checks that each `(name, device address)` is a multiple of
/// [`OPERAND_ALIGNMENT`].
pub fn check_operand_alignment(operands: &[(&str, u64)]) -> Result<()> {
    for &(what, address) in operands {
        if !address.is_multiple_of(OPERAND_ALIGNMENT) {
            return Err(Error::InvalidShape(format!(
                "GEMM operand {what} at {address:#x} is not {OPERAND_ALIGNMENT}-byte aligned \
                 (cuBLASLt's kernels are chosen for aligned operands; start the view at a \
                 multiple of {OPERAND_ALIGNMENT} bytes)"
            )));
        }
    }
    Ok(())
}

/// The column-major cuBLASLt problem that computes the row-major
/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, with A = w and B = x (module docs).
fn matmul_config(s: LinearShape) -> MatmulConfig {
    MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: s.n as u64,
        n: s.m as u64,
        k: s.k as u64,
        alpha: 1.0,
        lda: s.k as i64,
        ldb: s.k as i64,
        beta: 0.0,
        ldc: s.n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

/// A cuBLASLt handle (with its workspace) on the GPU's stream.
pub struct Gemm {
    lt: CudaBlasLT,
    /// The handle's stream. Its context is made current on the calling
    /// thread before each cuBLASLt call, which runs in whatever context is
    /// current (cudarc's matmul binds none).
    stream: Arc<CudaStream>,
}

impl Gemm {
    /// Loads libcublasLt and creates a handle on `gpu`'s stream.
    pub fn new(gpu: &Arc<Gpu>) -> Result<Gemm> {
        // SAFETY: only probes whether the library can be loaded; without
        // this, cudarc's first cuBLASLt call panics.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(Error::CudaUnavailable(
                "libcublasLt is not loadable (install the CUDA toolkit's cuBLAS or put libcublasLt.so on the loader path)"
                    .into(),
            ));
        }
        let stream = gpu.stream().clone();
        bind(&stream)?;
        // cudarc's handle allocates its workspace (32 MiB on Hopper) and
        // panics when it cannot; allocating one first turns that into an
        // error. Freed on the stream, it is what the handle then reuses.
        drop(
            Workspace::new(stream.clone())
                .map_err(|e| Error::Cuda(format!("allocate the cuBLASLt workspace: {e}")))?,
        );
        let lt = CudaBlasLT::new(stream.clone())
            .map_err(|e| Error::Cuda(format!("cublasLtCreate: {e:?}")))?;
        Ok(Gemm { lt, stream })
    }

    /// Queues `y = epilogue(x · wᵀ + bias)` on the GPU's stream, all
    /// row-major, f32 accumulation (TF32 for f32 operands), output rounded
    /// to `T`. `y` may be longer than `m·n`; the rest is untouched. Every
    /// operand must start [`OPERAND_ALIGNMENT`]-byte aligned.
    pub fn linear<T>(
        &self,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        y: &mut CudaViewMut<'_, T>,
        shape: LinearShape,
        epilogue: Epilogue,
    ) -> Result<()>
    where
        T: TensorElement,
        CudaBlasLT: Matmul<T>,
    {
        check_linear(shape, x.len(), w.len(), bias.map(|b| b.len()), y.len())?;
        let own = self.stream.context();
        check_buffer_context(own, x, "GEMM x")?;
        check_buffer_context(own, w, "GEMM w")?;
        if let Some(b) = bias {
            check_buffer_context(own, b, "GEMM bias")?;
        }
        check_buffer_context(own, y, "GEMM y")?;
        crate::cuda::check_capturable(&self.stream, "a cuBLASLt GEMM")?;
        let stream = &self.stream;
        let mut operands = vec![
            ("x", x.device_ptr(stream).0),
            ("w", w.device_ptr(stream).0),
            ("y", y.device_ptr_mut(stream).0),
        ];
        if let Some(b) = bias {
            operands.push(("bias", b.device_ptr(stream).0));
        }
        check_operand_alignment(&operands)?;
        bind(stream)?;
        let cfg = matmul_config(shape);
        let act = match epilogue {
            Epilogue::None => None,
            Epilogue::Relu => Some(Activation::Relu),
            Epilogue::CublasGelu => Some(Activation::Gelu),
        };
        // cudarc wants one view type for A, B and bias; reborrowing gives
        // them a common lifetime.
        let (w, x) = (w.slice(..), x.slice(..));
        let bias = bias.map(|b| b.slice(..));
        // SAFETY: the lengths were checked against the shape above, the
        // layouts describe exactly those row-major buffers, and every
        // buffer is on the handle's stream's context.
        unsafe { self.lt.matmul(cfg, &w, &x, y, bias.as_ref(), act.as_ref()) }
            .map_err(|e| Error::Cuda(format!("cublasLtMatmul {shape:?} {epilogue:?}: {e:?}")))
    }
}

fn bind(stream: &CudaStream) -> Result<()> {
    crate::cuda::bind_context(stream.context())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: LinearShape = LinearShape { m: 5, n: 3, k: 7 };

    #[test]
    fn good_shapes_pass() {
        check_linear(S, 35, 21, Some(3), 15).unwrap();
        check_linear(S, 35, 21, None, 100).unwrap();
    }

    #[test]
    fn wrong_operand_lengths_are_invalid_shapes() {
        for (r, needle) in [
            (check_linear(S, 36, 21, None, 15), "x [m, k] has 36"),
            // w given as [k, n'] with a different n: visible by length.
            (check_linear(S, 35, 28, None, 15), "w [n, k] has 28"),
            (check_linear(S, 35, 21, Some(5), 15), "bias [n] has 5"),
            (
                check_linear(LinearShape { k: 0, ..S }, 0, 0, None, 15),
                "zero-sized",
            ),
            (
                check_linear(LinearShape { m: 1 << 31, ..S }, 35, 21, None, 15),
                "exceeds i32::MAX",
            ),
        ] {
            match r {
                Err(Error::InvalidShape(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    /// BLAS semantics, column-major: `C[i + j·ldc] = Σ_l op(A)[i, l] ·
    /// op(B)[l, j]` with `op(A)[i, l] = A[l + i·lda]` when transposed (A is
    /// stored k × m) and `A[i + l·lda]` otherwise; the same for B. Run on
    /// the config [`Gemm::linear`] passes, it must give the row-major
    /// `nn.Linear` product, and the bias (indexed by C's row) must land on
    /// the output feature.
    #[test]
    fn column_major_config_computes_the_row_major_linear() {
        let s = LinearShape { m: 4, n: 3, k: 5 };
        let cfg = matmul_config(s);
        let x: Vec<f64> = (0..s.m * s.k).map(|i| (i * 7 % 11) as f64 - 5.0).collect();
        let w: Vec<f64> = (0..s.n * s.k).map(|i| (i * 5 % 13) as f64 - 6.0).collect();
        let bias = [0.5, -1.5, 2.5];
        let (a, b) = (&w, &x);
        let (cm, cn, ck) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        let op_a = |i: usize, l: usize| {
            if cfg.transa {
                a[l + i * lda]
            } else {
                a[i + l * lda]
            }
        };
        let op_b = |l: usize, j: usize| {
            if cfg.transb {
                b[j + l * ldb]
            } else {
                b[l + j * ldb]
            }
        };
        let mut c = vec![f64::NAN; ldc * cn];
        for j in 0..cn {
            for i in 0..cm {
                c[i + j * ldc] = (0..ck).map(|l| op_a(i, l) * op_b(l, j)).sum::<f64>() + bias[i];
            }
        }
        for r in 0..s.m {
            for o in 0..s.n {
                let y: f64 = (0..s.k)
                    .map(|l| x[r * s.k + l] * w[o * s.k + l])
                    .sum::<f64>()
                    + bias[o];
                assert_eq!(c[r * s.n + o], y, "y[{r}, {o}]");
            }
        }
    }

    #[test]
    fn operands_off_the_256_byte_grid_are_refused_by_name() {
        check_operand_alignment(&[("x", 0x7f00_0000_0000), ("w", 0x100)]).unwrap();
        match check_operand_alignment(&[("x", 0x7f00_0000_0000), ("bias", 0x7f00_0000_0102)]) {
            Err(Error::InvalidShape(m)) => {
                assert!(m.contains("bias at 0x7f0000000102"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_output_is_buffer_too_short() {
        assert_eq!(
            check_linear(S, 35, 21, None, 14),
            Err(Error::BufferTooShort {
                what: "GEMM output y [m, n] (elements)",
                len: 14,
                needed: 15
            })
        );
    }
}
