#!/usr/bin/env python3
"""Peer timings for benches/gpu_attention.rs: torch SDPA with each backend
forced (flash = FlashAttention-2, cuDNN, memory-efficient) on the same
cases: bf16, N = 1025 (and 1024), q/k/v as views of a packed qkv buffer
[B, N, 3, H, D] (what InternViT's qkv Linear produces), non-causal.

Times with CUDA events as the Rust benches do (gpu_timing.py: warm-up, then
the median over samples of calls queued back to back, rotating input sets
so that no call finds its inputs in L2) and prints one JSON object per line:
  {"stage": "attention", "impl": "torch-sdpa-cudnn", "case": "B7_H25_D128_N1025",
   "median_us": 211.0, "tflops": 447.0, "card": "..."}
TFLOP/s counts 4*B*H*N^2*D per call. A backend that refuses a case prints
a line with "error" instead of a time. Without a CUDA device it prints why
to stderr and exits 0.
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_timing import device_median_us

# (batch, heads, head_dim, tokens): the 1024-token cases show each peer's
# cost of the 1025 tail.
CASES = [
    (7, 25, 128, 1025),
    (13, 25, 128, 1025),
    (7, 16, 64, 1025),
    (13, 16, 64, 1025),
    (7, 25, 128, 1024),
    (7, 16, 64, 1024),
]
BACKENDS = {
    "torch-sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "torch-sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "torch-sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
}
ROTATION_BYTES = 160 << 20  # more than 3x an H100's 50 MiB L2


def views(qkv):
    # [B, N, 3, H, D] -> three [B, H, N, D] views, no copy (d stays contiguous).
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]


def time_backend(backend, inputs):
    with sdpa_kernel([backend]):
        return device_median_us(lambda qkv: F.scaled_dot_product_attention(*qkv), inputs)


def main():
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (peer_attention.py)", file=sys.stderr)
        return 0
    card = torch.cuda.get_device_name()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for batch, heads, head_dim, tokens in CASES:
        case = f"B{batch}_H{heads}_D{head_dim}_N{tokens}"
        shape = (batch, tokens, 3, heads, head_dim)
        nbytes = 2 * batch * tokens * 3 * heads * head_dim
        sets = ROTATION_BYTES // nbytes + 2
        inputs = [
            views(torch.rand(shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 4 - 2)
            for _ in range(sets)
        ]
        flops = 4 * batch * heads * tokens * tokens * head_dim
        for name, backend in BACKENDS.items():
            record = {"stage": "attention", "impl": name, "case": case, "card": card}
            try:
                median_us = time_backend(backend, inputs)
                record.update(median_us=round(median_us, 1), tflops=round(flops / median_us * 1e-6, 1))
            except RuntimeError as e:  # a backend that does not take this case
                record["error"] = str(e).splitlines()[0]
            print(json.dumps(record), flush=True)
        del inputs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
