#!/usr/bin/env python3
"""Times the Python reference on one thread: InternVL's dynamic_preprocess
(PIL resize, crop, thumbnail) then ToTensor + Normalize arithmetic in float32
numpy, NVLM-D config, on the sizes benches/preprocess_cpu.rs uses. Prints the
median of repeated runs per size.

  .venv/pillow12/bin/python scripts/bench_pillow.py
"""
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pillow_reference import dynamic_preprocess, normalize  # noqa: E402

SIZES = [(4032, 3024), (1920, 1080), (640, 480)]


def main():
    rng = np.random.default_rng(0)
    print(f"Pillow {PIL.__version__}, numpy {np.__version__}, one thread")
    for w, h in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        runs = 20 if w * h < 3_000_000 else 8
        times = []
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            _, tiles = dynamic_preprocess(image, 1, 6, 448, True)
            normalize(tiles)
            times.append(time.perf_counter() - t0)
        print(f"{w}x{h}: median {statistics.median(times[2:]) * 1e3:.2f} ms over {runs} runs")


if __name__ == "__main__":
    main()
