#!/usr/bin/env python3
"""Peer timings for benches/gpu_projector.rs: the projector in torch eager,
bf16, 7 tiles, NVLM-D-72B and 34B dims, as InternVL runs it: drop CLS,
pixel_shuffle(0.5) (ps_version v2: view, permute, view, permute), then mlp1 =
LayerNorm(12800), Linear, GELU (exact), Linear, no biases.

Cases (same names as the Rust bench):
  torch-eager            the whole projector (from the [T, 1025, C] hidden state)
  torch-eager-shuffle-ln drop CLS + pixel_shuffle + LayerNorm alone
  torch-linears-only     the two F.linear calls alone (cuBLAS's GEMM floor)
  torch-linear1-gelu     F.gelu(F.linear(x, w1)) alone (what the sm_90a
                         Linear's linear1-hopper-gelu does in one kernel)
  torch-linear2          F.linear(h, w2) alone

CUDA events as the Rust benches time (gpu_timing.py: warm-up, then the
median over samples of calls queued back to back), inputs rotated among
sets larger than L2. One JSON object per line on stdout.

  python3 scripts/peer_projector.py
"""
import json

import torch
import torch.nn.functional as F

from gpu_timing import device_median_us

TILES = 7
INPUT_SETS = 4
CONFIGS = [
    # name, C, Linear 1 out, Linear 2 out
    ("NVLM-D-72B", 3200, 29568, 8192),
    ("NVLM-D-34B", 3200, 20480, 7168),
]


def pixel_shuffle_v2(x, scale=0.5):
    # InternVL's sequence on [n, 32, 32, C]: view, permute, view, permute (v2).
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def front(hidden, ln):
    x = hidden[:, 1:, :]
    side = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], side, side, -1)
    x = pixel_shuffle_v2(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return ln(x)


@torch.inference_mode()
def main():
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name()
    gen = torch.Generator(device=dev).manual_seed(0)
    for name, c, h1, h2 in CONFIGS:
        case = f"{name}_T{TILES}"
        k1 = 4 * c
        rows = TILES * 256

        def uniform(*shape, scale=1.0):
            return (torch.rand(*shape, generator=gen, device=dev, dtype=torch.float32) * 2 - 1).mul_(scale).to(torch.bfloat16)

        ln = torch.nn.LayerNorm(k1, eps=1e-5, device=dev, dtype=torch.bfloat16)
        ln.weight.copy_(uniform(k1))
        ln.bias.copy_(uniform(k1, scale=0.5))
        w1 = uniform(h1, k1, scale=(3.0 / k1) ** 0.5)
        w2 = uniform(h2, h1, scale=(3.0 / h1) ** 0.5)
        hidden = [uniform(TILES, 1025, c, scale=2.0) for _ in range(INPUT_SETS)]
        fronts = [front(x, ln) for x in hidden]

        def whole(x):
            return F.linear(F.gelu(F.linear(front(x, ln), w1)), w2)

        def linears(x):
            return F.linear(F.linear(x, w1), w2)

        def linear1_gelu(x):
            return F.gelu(F.linear(x, w1))

        hiddens = [linear1_gelu(x) for x in fronts]

        def linear2(h):
            return F.linear(h, w2)

        flop = 2.0 * rows * (k1 * h1 + h1 * h2)
        moved = 2.0 * (TILES * 1025 * c + rows * k1)
        for impl, fn, inputs, extra in [
            ("torch-eager", whole, hidden, {}),
            ("torch-eager-shuffle-ln", lambda x: front(x, ln), hidden, {"bytes": moved}),
            ("torch-linears-only", linears, fronts, {}),
            ("torch-linear1-gelu", linear1_gelu, fronts, {"flop": 2.0 * rows * k1 * h1}),
            ("torch-linear2", linear2, hiddens, {"flop": 2.0 * rows * h1 * h2}),
        ]:
            us = device_median_us(fn, inputs)
            row = {"stage": "projector", "impl": impl, "case": case, "median_us": round(us, 1), "card": card}
            if "bytes" in extra:
                row["tb_per_s"] = round(extra["bytes"] / (us * 1e-6) / 1e12, 3)
            else:
                row["tflops"] = round(extra.get("flop", flop) / (us * 1e-6) / 1e12, 1)
            print(json.dumps(row), flush=True)
        del ln, w1, w2, hidden, fronts, hiddens
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
