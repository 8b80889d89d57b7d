#!/usr/bin/env python3
"""Peers of the DHR preprocessing kernel, on the GPU host (torch, numpy and
PIL; torchvision for the CPU pipeline only, whose row says so when it is
missing). Same work and case names as benches/gpu_preprocess.rs:
NVLM-D config (1..=6 tiles of 448 + thumbnail), random uint8 RGB in, f32
[T, 3, 448, 448] out. Prints one JSON line per (impl, case):

  torch-interpolate   torch on the GPU, device-resident HWC uint8 input:
                      F.interpolate(bicubic, antialias) to the grid size and to
                      448x448, rounded to uint8 levels, cut into tiles,
                      normalised (REFERENCE.md §7). Not Pillow-exact:
                      "max_diff_levels" is its largest difference from PIL.
  pil-torchvision-cpu InternVL's dynamic_preprocess with PIL then its
                      build_transform (Resize, ToTensor, Normalize) per tile,
                      one image, on the CPU.
  d2d-copy-floor      a device-to-device copy moving as many bytes as the
                      floor (input read once + output written once): the
                      bandwidth ceiling for this case.

GPU times: CUDA events as the Rust benches time (gpu_timing.py: warm-up,
then the median over samples of calls queued back to back, so a copy of a
few microseconds is not timed as the host's dispatch), rotating among input
sets larger than L2.

  python3 scripts/peer_preprocess.py
"""
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode
except ImportError as e:  # the GPU rows do not need it
    T, TORCHVISION_MISSING = None, f"torchvision: {e}"

from gpu_timing import device_median_us

SIZES = [(4032, 3024), (1920, 1080), (640, 480)]
TILE = 448
MIN_TILES, MAX_TILES = 1, 6
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ROTATE_BYTES = 240e6  # several times the 50-60 MB L2 of an H100/H200


def target_ratios(min_num, max_num):
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(aspect_ratio, ratios, width, height, image_size):
    """InternVL's rule, ties and all."""
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def plan(w, h):
    """(cols, rows), whether a thumbnail follows."""
    cols, rows = find_closest_aspect_ratio(w / h, target_ratios(MIN_TILES, MAX_TILES), w, h, TILE)
    return cols, rows, cols * rows != 1


def pil_pipeline(image, transform):
    """InternVL's dynamic_preprocess + build_transform, one image; without
    torchvision (transform None) its ToTensor + Normalize in numpy, for the
    comparison only."""
    w, h = image.size
    cols, rows, thumbnail = plan(w, h)
    resized = image.resize((cols * TILE, rows * TILE))
    tiles = [
        resized.crop((c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE))
        for r in range(rows)
        for c in range(cols)
    ]
    if thumbnail:
        tiles.append(image.resize((TILE, TILE)))
    if transform is None:
        mean, std = np.array(MEAN).reshape(3, 1, 1), np.array(STD).reshape(3, 1, 1)
        planes = [np.asarray(t, dtype=np.float32).transpose(2, 0, 1) / 255 for t in tiles]
        return torch.from_numpy(np.stack([(p - mean) / std for p in planes]).astype(np.float32))
    return torch.stack([transform(t) for t in tiles])


def torch_pipeline(hwc_u8, cols, rows, thumbnail, mean, std):
    x = hwc_u8.permute(2, 0, 1).unsqueeze(0).float()

    def resize(height, width):
        y = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255)  # PIL's uint8 levels

    grid = resize(rows * TILE, cols * TILE)
    # reshape, not view: interpolate may return a channels-last layout.
    parts = [grid.reshape(3, rows, TILE, cols, TILE).permute(1, 3, 0, 2, 4).reshape(-1, 3, TILE, TILE)]
    if thumbnail:
        parts.append(resize(TILE, TILE))
    return torch.cat(parts).div_(255).sub_(mean).div_(std)


def emit(card, impl, case, median_us, **extra):
    print(json.dumps({"stage": "preprocess", "impl": impl, "case": case,
                      "median_us": round(median_us, 2), "card": card, **extra}), flush=True)


def main():
    if not torch.cuda.is_available():
        print("peer_preprocess: torch sees no CUDA device", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name()
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    transform = None if T is None else T.Compose([
        T.Lambda(lambda img: img.convert("RGB")),
        T.Resize((TILE, TILE), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    rng = np.random.default_rng()
    for w, h in SIZES:
        case = f"{w}x{h}"
        cols, rows, thumbnail = plan(w, h)
        outputs = cols * rows + thumbnail
        in_bytes = w * h * 3
        out_bytes = outputs * 3 * TILE * TILE * 4
        floor_bytes = in_bytes + out_bytes
        n_sets = max(2, min(64, math.ceil(ROTATE_BYTES / floor_bytes)))
        host = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_sets)]

        # The CPU reference, and how far torch's resize lands from it.
        image = Image.fromarray(host[0], "RGB")
        if transform is None:
            want = pil_pipeline(image, None)
            print(json.dumps({"stage": "preprocess", "impl": "pil-torchvision-cpu", "case": case,
                              "card": card, "error": TORCHVISION_MISSING}), flush=True)
        else:
            times = []
            for _ in range(4 if w * h > 3_000_000 else 12):
                t0 = time.perf_counter()
                want = pil_pipeline(image, transform)
                times.append(time.perf_counter() - t0)
            emit(card, "pil-torchvision-cpu", case, statistics.median(times[1:]) * 1e6,
                 threads=torch.get_num_threads())

        sets = [torch.from_numpy(a).to(dev) for a in host]
        got = torch_pipeline(sets[0], cols, rows, thumbnail, mean, std).cpu()
        std_cpu = torch.tensor(STD).view(1, 3, 1, 1)
        max_diff = float(((got - want).abs() * std_cpu * 255).max())
        us = device_median_us(lambda x: torch_pipeline(x, cols, rows, thumbnail, mean, std), sets)
        emit(card, "torch-interpolate", case, us, max_diff_levels=round(max_diff, 3),
             gbps=round(floor_bytes / us / 1e3, 1))
        del sets

        half = floor_bytes // 2  # a copy reads and writes: floor_bytes in all
        pairs = [(torch.randint(0, 256, (half,), dtype=torch.uint8, device=dev),
                  torch.empty(half, dtype=torch.uint8, device=dev)) for _ in range(n_sets)]
        us = device_median_us(lambda p: p[1].copy_(p[0]), pairs)
        emit(card, "d2d-copy-floor", case, us, bytes=2 * half, gbps=round(2 * half / us / 1e3, 1))
        del pairs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
