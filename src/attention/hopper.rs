//! Launching the sm_90a flash-attention kernel (kernels/attention_hopper.cu):
//! a TMA tensor map per input, then the launch. The caller
//! ([`super::flash_attention_with`]) has run every check and holds the
//! buffers.

use super::AttentionElement;
use super::AttentionLayout;
use super::gpu::DeviceTensors;
use crate::abi::{
    NVLM_HOPPER_ATTENTION_QUERY_ROWS, NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64,
    NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128, NVLM_HOPPER_ATTENTION_THREADS, NvlmHopperAttention,
};
use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::hopper::{TensorMap, TiledTensor, TmaElement, TmaSwizzle};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Keys per K/V tile and head_dim columns per 128-byte swizzle atom, as the
/// kernel's boxes.
const KEY_ROWS: u32 = 128;
const ATOM_COLUMNS: u32 = 64;

/// The 4-D tensor (d, X, Y, batch) TMA reads for one input, X and Y being
/// its token and head dimensions in increasing stride order (packed qkv has
/// heads inside tokens, torch's [B, H, N, D] the reverse), with boxes of 64
/// d x `box_rows` tokens. Returns it and whether X is the token dimension.
fn input_tensor<T: AttentionElement>(
    address: u64,
    layout: &AttentionLayout,
    box_rows: u32,
) -> Result<(TiledTensor<4>, u32)> {
    let element = match T::DTYPE {
        Dtype::Bf16 => TmaElement::Bf16,
        Dtype::F16 => TmaElement::F16,
        Dtype::F32 => return Err(Error::Unsupported("f32 attention".into())),
    };
    // A dimension of size 1 never moves; give it a stride past the whole
    // tensor (a multiple of 16 bytes) so that it sorts outermost.
    let beyond = layout
        .span()
        .ok_or_else(|| Error::InvalidShape(format!("{layout:?} overflows")))?
        .next_multiple_of(8);
    let stride = |size: usize, stride: usize| if size > 1 { stride } else { beyond };
    let tokens = (layout.tokens, stride(layout.tokens, layout.strides[1]));
    let heads = (layout.heads, stride(layout.heads, layout.strides[2]));
    let batch = (layout.batch, stride(layout.batch, layout.strides[0]));
    let tokens_inner = tokens.1 <= heads.1;
    let (x, y, box_x, box_y) = if tokens_inner {
        (tokens, heads, box_rows, 1)
    } else {
        (heads, tokens, 1, box_rows)
    };
    let bytes = |elements: usize| 2 * elements as u64;
    let tensor = TiledTensor {
        address: address + bytes(layout.offset),
        element,
        dims: [layout.head_dim, x.0, y.0, batch.0].map(|d| d as u64),
        strides_bytes: [2, bytes(x.1), bytes(y.1), bytes(batch.1)],
        box_dims: [ATOM_COLUMNS, box_x, box_y, 1],
        swizzle: TmaSwizzle::B128,
    };
    tensor.check()?;
    Ok((tensor, u32::from(tokens_inner)))
}

/// Everything one launch needs apart from the GPU: what the tensor maps
/// describe, the parameters, the grid and the kernel. Made without a
/// device, so that the host emulation runs exactly this launch.
#[derive(Debug)]
struct HopperLaunch {
    /// q, k, v.
    inputs: [TiledTensor<4>; 3],
    params: NvlmHopperAttention,
    grid: (u32, u32, u32),
    smem_bytes: u32,
    kernel: String,
}

fn plan<T: AttentionElement>(t: &DeviceTensors<'_>, scale: f32) -> Result<HopperLaunch> {
    let (q, k, out) = (t.q.1, t.k.1, t.out.1);
    let (q_tensor, q_tokens_inner) = input_tensor::<T>(t.q.0, q, NVLM_HOPPER_ATTENTION_QUERY_ROWS)?;
    let (k_tensor, k_tokens_inner) = input_tensor::<T>(t.k.0, k, KEY_ROWS)?;
    let (v_tensor, v_tokens_inner) = input_tensor::<T>(t.v.0, t.v.1, KEY_ROWS)?;
    if k_tokens_inner != v_tokens_inner {
        return Err(Error::Unsupported(
            "the Hopper attention kernel needs k and v with the same order of token and head strides"
                .into(),
        ));
    }
    let smem_bytes = match q.head_dim {
        64 => NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64,
        128 => NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128,
        d => {
            return Err(Error::Unsupported(format!(
                "Hopper attention for head_dim {d}"
            )));
        }
    };
    let params = NvlmHopperAttention {
        o: t.out.0 + 2 * out.offset as u64,
        lse: t.lse,
        // A size-1 dimension's stride multiplies index 0 only.
        o_batch_stride: out.strides[0] as i64,
        o_token_stride: out.strides[1] as i64,
        o_head_stride: out.strides[2] as i64,
        // Checked: batch and heads <= 65535, tokens < 2^31.
        batch: q.batch as u32,
        heads: q.heads as u32,
        q_len: q.tokens as u32,
        kv_len: k.tokens as u32,
        softmax_scale: scale,
        q_tokens_inner,
        kv_tokens_inner: k_tokens_inner,
        reserved: 0,
    };
    Ok(HopperLaunch {
        inputs: [q_tensor, k_tensor, v_tensor],
        params,
        grid: (
            q.tokens.div_ceil(NVLM_HOPPER_ATTENTION_QUERY_ROWS as usize) as u32,
            q.heads as u32,
            q.batch as u32,
        ),
        smem_bytes,
        kernel: format!("attention_hopper_d{}_{}", q.head_dim, T::KERNEL_SUFFIX),
    })
}

pub(super) fn launch<T: AttentionElement>(
    gpu: &Gpu,
    t: &DeviceTensors<'_>,
    scale: f32,
) -> Result<()> {
    let plan = plan::<T>(t, scale)?;
    let maps = plan
        .inputs
        .iter()
        .map(|tensor| TensorMap::tiled(gpu, tensor))
        .collect::<Result<Vec<_>>>()?;
    let function = gpu.function(KernelModule::AttentionHopper, &plan.kernel)?;
    allow_dynamic_smem(&function, plan.smem_bytes)?;
    let config = LaunchConfig {
        grid_dim: plan.grid,
        block_dim: (NVLM_HOPPER_ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: plan.smem_bytes,
    };
    // SAFETY: the tensor maps describe the checked q, k and v (TMA reads
    // only inside them); the output indices are bounded by the checked
    // layout and length; the caller holds the buffers' stream guards until
    // the launch is queued.
    unsafe {
        gpu.stream()
            .launch_builder(&function)
            .arg(&maps[0])
            .arg(&maps[1])
            .arg(&maps[2])
            .arg(&plan.params)
            .launch(config)
    }
    .map_err(driver_error(&plan.kernel))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Without a GPU, the launch `plan` makes runs on the kernel's own
    //! source compiled for the CPU (tests/host_emulation): 384 threads per
    //! block over emulated mbarriers, TMA and wgmma, under the address
    //! sanitizer and, for two small cases, the thread sanitizer. Outputs
    //! are held to the GPU suite's rule against the f64 reference. The
    //! emulated primitives follow the PTX ISA's text, so this checks the
    //! kernel's use of them (pipeline phases, expected bytes, descriptor and
    //! fragment arithmetic, tails, output indexing), not that the hardware
    //! reads the ISA the same way: tests/gpu_hopper_primitives.rs does that.
    use super::*;
    use crate::attention::{
        AttentionTensor, QkvPart, attention_f64, attention_same_precision, default_scale,
    };
    use crate::host_emulation;
    use half::{bf16, f16};
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    /// The emulated device memory's first address (any 16-byte aligned one).
    const DEVICE_BASE: u64 = 0x7f00_0000_0000;

    /// kernels/attention_hopper.cu, abi.h and the descriptor encoder as
    /// they are, with the emulated primitives in place of kernels/common.
    fn staged_source() -> PathBuf {
        let root = host_emulation::root();
        let dir = host_emulation::scratch_dir("attention_hopper_source");
        std::fs::create_dir_all(dir.join("common")).unwrap();
        let kernel_files = [
            "attention_hopper.cu",
            "abi.h",
            "common/wgmma_descriptor.cuh",
        ];
        let emulation_files = [
            "emulation.h",
            "cuda.h",
            "cuda_bf16.h",
            "cuda_fp16.h",
            "common/ptx.cuh",
            "common/mbarrier.cuh",
            "common/tma.cuh",
            "common/wgmma.cuh",
        ];
        for file in kernel_files {
            std::fs::copy(root.join("kernels").join(file), dir.join(file)).unwrap();
        }
        for file in emulation_files {
            let from = root.join("tests/host_emulation/hopper").join(file);
            std::fs::copy(from, dir.join(file)).unwrap();
        }
        dir
    }

    fn emulator(sanitizer: &'static str) -> Option<&'static PathBuf> {
        static ADDRESS: OnceLock<Option<PathBuf>> = OnceLock::new();
        static THREAD: OnceLock<Option<PathBuf>> = OnceLock::new();
        let cell = if sanitizer == "thread" {
            &THREAD
        } else {
            &ADDRESS
        };
        cell.get_or_init(|| {
            host_emulation::build(
                &format!("attention_hopper_on_cpu_{sanitizer}"),
                "tests/host_emulation/attention_hopper_on_cpu.cpp",
                &[staged_source()],
                sanitizer,
            )
        })
        .as_ref()
    }

    /// SplitMix64 in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Arrangement {
        /// q, k, v each `[B, N, H, D]`.
        Contiguous,
        /// Views of one `[B, N, 3, H, D]` buffer (needs Nq = Nkv).
        PackedQkv,
        /// q, k, v each torch's `[B, H, N, D]`: tokens inside heads.
        HeadsOuter,
    }

    #[derive(Debug, Clone, Copy)]
    struct Case {
        batch: usize,
        heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
        arrangement: Arrangement,
        /// Output rows 16 elements wider than the heads: the gaps must stay.
        padded_out: bool,
        lse: bool,
    }

    fn heads_outer(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> AttentionLayout {
        AttentionLayout {
            batch,
            tokens,
            heads,
            head_dim,
            offset: 0,
            strides: [heads * tokens * head_dim, head_dim, tokens * head_dim],
        }
    }

    /// The device memory of one launch: buffers 256-byte aligned in one blob.
    #[derive(Default)]
    struct Memory(Vec<u8>);

    impl Memory {
        fn put<E: bytemuck::Pod>(&mut self, data: &[E]) -> u64 {
            let at = self.0.len().next_multiple_of(256);
            self.0.resize(at, 0);
            self.0.extend_from_slice(bytemuck::cast_slice(data));
            DEVICE_BASE + at as u64
        }

        fn get<E: bytemuck::Pod>(bytes: &[u8], address: u64, len: usize) -> Vec<E> {
            let at = (address - DEVICE_BASE) as usize;
            bytemuck::pod_collect_to_vec(&bytes[at..at + len * size_of::<E>()])
        }
    }

    fn launch_file(plan: &HopperLaunch, memory: &[u8]) -> Vec<u8> {
        let mut file = b"NVLMHOP1".to_vec();
        let mut put = |v: u64| file.extend_from_slice(&v.to_le_bytes());
        put(DEVICE_BASE);
        put(memory.len() as u64);
        put(plan.grid.0.into());
        put(plan.grid.1.into());
        put(plan.grid.2.into());
        put(NVLM_HOPPER_ATTENTION_THREADS.into());
        put(plan.smem_bytes.into());
        put(size_of::<NvlmHopperAttention>() as u64);
        put(plan.kernel.len() as u64);
        file.extend_from_slice(plan.kernel.as_bytes());
        for tensor in &plan.inputs {
            let mut record = vec![tensor.address, 4, tensor.element.size_bytes()];
            record.extend(tensor.dims);
            record.extend(tensor.strides_bytes);
            record.extend(tensor.box_dims.map(u64::from));
            record.push(match tensor.swizzle {
                TmaSwizzle::None => 0,
                TmaSwizzle::B32 => 32,
                TmaSwizzle::B64 => 64,
                TmaSwizzle::B128 => 128,
            });
            for v in record {
                file.extend_from_slice(&v.to_le_bytes());
            }
        }
        // SAFETY: repr(C) plain integers and floats without padding (abi.h
        // orders the fields so).
        file.extend_from_slice(unsafe {
            std::slice::from_raw_parts(
                (&plan.params as *const NvlmHopperAttention).cast::<u8>(),
                size_of::<NvlmHopperAttention>(),
            )
        });
        file.extend_from_slice(memory);
        file
    }

    /// Runs `case` on the emulator and checks it; returns the kernel's and
    /// the naive same-precision reference's largest error.
    fn check_case<T: AttentionElement>(exe: &Path, case: Case, seed: u64) -> (f64, f64) {
        let Case {
            batch: b,
            heads: h,
            q_len: n_q,
            kv_len: n_kv,
            head_dim: d,
            ..
        } = case;
        let mut rng = Rng(seed);
        let mut fill = |n: usize| -> Vec<T> { (0..n).map(|_| T::from_f32(rng.unit())).collect() };
        let mut memory = Memory::default();
        let (layouts, addresses, inputs): ([AttentionLayout; 3], [u64; 3], Vec<Vec<T>>) = match case
            .arrangement
        {
            Arrangement::PackedQkv => {
                assert_eq!(n_q, n_kv);
                let layout = |part| AttentionLayout::packed_qkv(b, n_q, h, d, part);
                let qkv = fill(b * n_q * 3 * h * d);
                let at = memory.put(&qkv);
                let layouts = [QkvPart::Q, QkvPart::K, QkvPart::V].map(layout);
                (layouts, [at; 3], vec![qkv.clone(), qkv.clone(), qkv])
            }
            arrangement => {
                let layout = |n| match arrangement {
                    Arrangement::HeadsOuter => heads_outer(b, n, h, d),
                    _ => AttentionLayout::contiguous(b, n, h, d),
                };
                let layouts = [layout(n_q), layout(n_kv), layout(n_kv)];
                let data: Vec<Vec<T>> = layouts.iter().map(|l| fill(l.span().unwrap())).collect();
                let addresses = [0, 1, 2].map(|i| memory.put(&data[i]));
                (layouts, addresses, data)
            }
        };
        let row = h * d + if case.padded_out { 16 } else { 0 };
        let out_layout = AttentionLayout {
            strides: [n_q * row, row, d],
            ..AttentionLayout::contiguous(b, n_q, h, d)
        };
        let poison = T::from_f32(f32::NAN);
        let out_len = out_layout.span().unwrap();
        let out_at = memory.put(&vec![poison; out_len]);
        let lse_at = if case.lse {
            memory.put(&vec![f32::NAN; b * h * n_q])
        } else {
            0
        };
        let tensors = DeviceTensors {
            q: (addresses[0], &layouts[0]),
            k: (addresses[1], &layouts[1]),
            v: (addresses[2], &layouts[2]),
            out: (out_at, &out_layout),
            lse: lse_at,
        };
        let scale = default_scale(d);
        let plan = plan::<T>(&tensors, scale).unwrap();
        let after = host_emulation::run(exe, &launch_file(&plan, &memory.0));
        let what = format!("{case:?} {}", plan.kernel);

        for (i, input) in inputs.iter().enumerate() {
            let now: Vec<T> = Memory::get(&after, addresses[i], input.len());
            let unchanged: &[u8] = bytemuck::cast_slice(input);
            assert!(
                bytemuck::cast_slice::<T, u8>(&now) == unchanged,
                "{what}: input {i} changed"
            );
        }
        let out: Vec<T> = Memory::get(&after, out_at, out_len);
        let mut inside = vec![false; out_len];
        for (bi, ni, hi) in
            (0..b).flat_map(|x| (0..n_q).flat_map(move |y| (0..h).map(move |z| (x, y, z))))
        {
            let s = out_layout.index(bi, ni, hi, 0);
            inside[s..s + d].fill(true);
        }
        for (i, (x, is_in)) in out.iter().zip(&inside).enumerate() {
            let bits_kept = bytemuck::bytes_of(x) == bytemuck::bytes_of(&poison);
            assert!(
                if *is_in {
                    x.to_f32().is_finite()
                } else {
                    bits_kept
                },
                "{what}: output element {i} ({} the layout) is {}",
                if *is_in { "inside" } else { "outside" },
                x.to_f32()
            );
        }

        let view = |i: usize| AttentionTensor::new(&inputs[i][..], layouts[i]);
        let (q, k, v) = (view(0), view(1), view(2));
        let (want, want_lse) = attention_f64(&q, &k, &v, f64::from(scale)).unwrap();
        let naive = attention_same_precision(&q, &k, &v, scale).unwrap();
        let dense = AttentionLayout::contiguous(b, n_q, h, d);
        let (mut err, mut naive_err, mut ref_max) = (0f64, 0f64, 0f64);
        let (mut err_sq, mut naive_sq, mut ref_sq) = (0f64, 0f64, 0f64);
        for bi in 0..b {
            for ni in 0..n_q {
                for hi in 0..h {
                    let (s, r) = (out_layout.index(bi, ni, hi, 0), dense.index(bi, ni, hi, 0));
                    for j in 0..d {
                        let (got, nv, w) = (
                            f64::from(out[s + j].to_f32()),
                            f64::from(naive[r + j].to_f32()),
                            want[r + j],
                        );
                        err = err.max((got - w).abs());
                        naive_err = naive_err.max((nv - w).abs());
                        ref_max = ref_max.max(w.abs());
                        err_sq += (got - w).powi(2);
                        naive_sq += (nv - w).powi(2);
                        ref_sq += w * w;
                    }
                }
            }
        }
        // The GPU suite's rule (FlashAttention's): twice the naive error.
        let atol = 1e-5 * ref_max.max(1e-3);
        assert!(
            err <= 2.0 * naive_err + atol,
            "{what}: max error {err:.3e} > 2 x naive same-precision error {naive_err:.3e} + {atol:.1e}"
        );
        let (rel, naive_rel) = ((err_sq / ref_sq).sqrt(), (naive_sq / ref_sq).sqrt());
        assert!(
            rel <= 2.0 * naive_rel + 1e-5,
            "{what}: relative error {rel:.3e} > 2 x naive {naive_rel:.3e}"
        );
        if case.lse {
            let lse: Vec<f32> = Memory::get(&after, lse_at, b * h * n_q);
            for (i, (got, want)) in lse.iter().zip(&want_lse).enumerate() {
                let e = (f64::from(*got) - want).abs() / (1.0 + want.abs());
                assert!(e <= 1e-4, "{what}: LSE {i} is {got}, want {want}");
            }
        }
        (err, naive_err)
    }

    fn case(
        (batch, heads, q_len, kv_len, head_dim): (usize, usize, usize, usize, usize),
        arrangement: Arrangement,
        padded_out: bool,
        lse: bool,
    ) -> Case {
        Case {
            batch,
            heads,
            q_len,
            kv_len,
            head_dim,
            arrangement,
            padded_out,
            lse,
        }
    }

    #[test]
    fn kernel_source_on_the_cpu_matches_the_f64_reference() {
        let Some(exe) = emulator("address") else {
            return;
        };
        use Arrangement::*;
        // Tails of one key and one query; Nq != Nkv both ways; every input
        // arrangement (token- or head-inner tensor maps); the K/V ring
        // wrapping (3 and 9 tiles over 2 stages); a last query tile with
        // one active consumer warpgroup; padded output rows; both dtypes
        // and head dims.
        let cases = [
            (case((1, 1, 1, 1, 64), Contiguous, false, true), false),
            (case((2, 3, 65, 130, 128), HeadsOuter, false, true), true),
            (case((1, 2, 129, 129, 128), PackedQkv, true, false), false),
            (case((2, 2, 200, 63, 64), Contiguous, true, true), true),
            (case((1, 2, 257, 257, 64), PackedQkv, false, true), false),
            (case((1, 1, 1025, 1025, 64), PackedQkv, false, true), true),
        ];
        for (seed, (case, f16)) in cases.into_iter().enumerate() {
            let (err, naive) = if f16 {
                check_case::<f16>(exe, case, seed as u64 + 1)
            } else {
                check_case::<bf16>(exe, case, seed as u64 + 1)
            };
            eprintln!("{case:?} f16 {f16}: max error {err:.2e}, naive {naive:.2e}");
        }
    }

    #[test]
    fn kernel_source_on_the_cpu_has_no_data_race() {
        let Some(exe) = emulator("thread") else {
            return;
        };
        // The 2-stage ring wraps (3 K/V tiles), and the last tile has a
        // key tail.
        check_case::<bf16>(
            exe,
            case((1, 1, 130, 300, 64), Arrangement::Contiguous, false, true),
            11,
        );
        check_case::<f16>(
            exe,
            case((1, 1, 65, 257, 128), Arrangement::HeadsOuter, true, false),
            12,
        );
    }
}
