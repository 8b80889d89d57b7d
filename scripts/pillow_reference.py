#!/usr/bin/env python3
"""The Python reference pipeline nvlm-vision is checked against.

InternVL's `dynamic_preprocess` (tile planning, PIL resize, crop, thumbnail)
and torchvision's `ToTensor()` + `Normalize()` arithmetic in float32 numpy.
Run it with the Python of one pinned Pillow environment (scripts/setup_python.sh).

Subcommands
  golden FIXTURE_DIR OUT_JSON   plans and hashes for every fixture image
  batch MANIFEST                resize/plan jobs for the live parity test
  grids MIN MAX MAX_SIDE        the chosen (cols, rows) bytes for every size up to MAX_SIDE
  grids-sample MIN MAX FILE     the chosen (cols, rows) bytes for the sizes listed in FILE
"""
import hashlib
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def target_ratios(min_num, max_num):
    """InternVL's candidate grids, in the order its code iterates them."""
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(aspect_ratio, ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num, max_num, image_size, use_thumbnail):
    """InternVL's dynamic_preprocess; returns (grid, tiles)."""
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    ratios = target_ratios(min_num, max_num)
    grid = find_closest_aspect_ratio(aspect_ratio, ratios, orig_width, orig_height, image_size)
    target_width = image_size * grid[0]
    target_height = image_size * grid[1]
    blocks = grid[0] * grid[1]
    resized = image.resize((target_width, target_height))
    tiles = []
    cols = target_width // image_size
    for i in range(blocks):
        box = (
            (i % cols) * image_size,
            (i // cols) * image_size,
            ((i % cols) + 1) * image_size,
            ((i // cols) + 1) * image_size,
        )
        tiles.append(resized.crop(box))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return grid, tiles


def normalize(tiles):
    """ToTensor() then Normalize(MEAN, STD), in float32 as torch computes it."""
    u8 = np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])  # [T, H, W, 3]
    x = u8.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    mean = np.array(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype="<f4")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def golden(fixture_dir, out_json):
    configs = [("nvlm_d", 1, 6, True), ("internvl_chat", 1, 12, True), ("min2_max4_no_thumb", 2, 4, False)]
    images = {}
    for name in sorted(os.listdir(fixture_dir)):
        if not name.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        with Image.open(os.path.join(fixture_dir, name)) as im:
            im.load()
            source_mode = im.mode
            rgb = im.convert("RGB")
        entry = {
            "size": list(rgb.size),
            "mode": source_mode,
            "decoded_rgb_sha256": sha256(rgb.tobytes()),
            "configs": {},
        }
        for cname, lo, hi, thumb in configs:
            grid, tiles = dynamic_preprocess(rgb, lo, hi, 448, thumb)
            u8 = b"".join(t.tobytes() for t in tiles)
            entry["configs"][cname] = {
                "grid": list(grid),
                "outputs": len(tiles),
                "tiles_u8_sha256": sha256(u8),
                "tensor_f32_sha256": sha256(normalize(tiles).tobytes()),
            }
        images[name] = entry
    doc = {
        "generator": "scripts/pillow_reference.py golden",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "configs": {c[0]: {"min_tiles": c[1], "max_tiles": c[2], "thumbnail": c[3]} for c in configs},
        "images": images,
    }
    with open(out_json, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")


def batch(manifest_path):
    """Jobs from the live parity test. Each job names a raw image file (PIL
    `mode`), what to produce from it, and where to write the bytes."""
    with open(manifest_path) as f:
        jobs = json.load(f)
    for job in jobs:
        w, h = job["width"], job["height"]
        with open(job["input"], "rb") as f:
            im = Image.frombytes(job["mode"], (w, h), f.read()).convert("RGB")
        if job["kind"] == "resize":
            out = im.resize((job["out_width"], job["out_height"]))
            data = out.tobytes()
        else:  # "dhr_u8" or "dhr_f32"
            _, tiles = dynamic_preprocess(im, job["min_tiles"], job["max_tiles"], 448, job["thumbnail"])
            data = normalize(tiles).tobytes() if job["kind"] == "dhr_f32" else b"".join(t.tobytes() for t in tiles)
        with open(job["output"], "wb") as f:
            f.write(data)


def grid_bytes(sizes, min_num, max_num):
    """(cols, rows) of the chosen grid, one byte each, per size."""
    ratios = target_ratios(min_num, max_num)
    out = bytearray()
    for w, h in sizes:
        out.extend(find_closest_aspect_ratio(w / h, ratios, w, h, 448))
    return bytes(out)


TABLE_CONFIGS = [(1, 6), (1, 12), (2, 4)]


def tie_sizes(max_num):
    """Sizes whose aspect ratio is the exact midpoint of two candidate
    ratios, at scales on both sides of the area tie-break."""
    ratios = target_ratios(1, max_num)
    sizes = set()
    for a, b in ratios:
        for c, d in ratios:
            num, den = a * d + b * c, 2 * b * d  # (a/b + c/d) / 2
            for k in (1, 3, 17, 101, 400):
                if num * k <= 8192 and den * k <= 8192:
                    sizes.add((num * k, den * k))
    return sizes


def grid_table(out_path):
    """Sizes up to 8192: a uniform sample plus every tie size, one line each:
    `w h` then `cols rows` per TABLE_CONFIGS entry."""
    import random

    rnd = random.Random(20261128)
    sizes = {(rnd.randint(1, 8192), rnd.randint(1, 8192)) for _ in range(6000)}
    sizes |= {(rnd.randint(1, 8192), rnd.randint(1, 64)) for _ in range(500)}
    sizes |= {(rnd.randint(1, 64), rnd.randint(1, 8192)) for _ in range(500)}
    sizes |= tie_sizes(12)
    sizes = sorted(sizes)
    columns = [grid_bytes(sizes, lo, hi) for lo, hi in TABLE_CONFIGS]
    with open(out_path, "w") as f:
        f.write("# w h " + " ".join(f"cols{lo}_{hi} rows{lo}_{hi}" for lo, hi in TABLE_CONFIGS) + "\n")
        for n, (w, h) in enumerate(sizes):
            grids = " ".join(f"{col[2 * n]} {col[2 * n + 1]}" for col in columns)
            f.write(f"{w} {h} {grids}\n")


def main(argv):
    cmd = argv[1]
    if cmd == "golden":
        golden(argv[2], argv[3])
    elif cmd == "batch":
        batch(argv[2])
    elif cmd == "grids":
        lo, hi, side = int(argv[2]), int(argv[3]), int(argv[4])
        sizes = ((w, h) for w in range(1, side + 1) for h in range(1, side + 1))
        sys.stdout.buffer.write(grid_bytes(sizes, lo, hi))
    elif cmd == "grid-table":
        grid_table(argv[2])
    elif cmd == "ratios-all":
        top = int(argv[2])
        orders = {f"{lo},{hi}": target_ratios(lo, hi) for hi in range(1, top + 1) for lo in range(1, hi + 1)}
        print(json.dumps(orders))
    else:
        sys.exit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
