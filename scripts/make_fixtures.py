#!/usr/bin/env python3
"""Writes the committed test corpus in tests/fixtures/images (run once; the
outputs are committed). Synthetic images come from a fixed numpy seed; photos
come from scikit-image's bundled sample data (CC0 / public domain), whose
wheel is passed as SKIMAGE_WHEEL.

  python scripts/make_fixtures.py SKIMAGE_WHEEL OUT_DIR
"""
import io
import sys
import zipfile

import numpy as np
from PIL import Image

rng = np.random.default_rng(20261128)


def pattern(w, h, noise_rows=0):
    """Gradients, a hard 0/255 checkerboard (exercises clipping) and an
    optional band of uniform noise, as uint8 RGB."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = np.where(((x // 7) + (y // 5)) % 2 == 0, 255, 0).astype(np.uint8)
    img = np.stack([r, g, b], axis=-1)
    if noise_rows:
        img[:noise_rows] = rng.integers(0, 256, size=(min(noise_rows, h), w, 3), dtype=np.uint8)
    return img


def noise(w, h, channels=3):
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def main(wheel, out):
    synthetic = {
        "synth_1x1.png": noise(1, 1),
        "synth_3x2.png": noise(3, 2),
        "synth_5x2_tie.png": noise(5, 2),
        "synth_1x4000.png": noise(1, 4000),
        "synth_4000x1.png": noise(4000, 1),
        "synth_20x4000.png": pattern(20, 4000, noise_rows=400),
        "synth_4000x20.png": pattern(4000, 20, noise_rows=4),
        "synth_448x448.png": pattern(448, 448, noise_rows=100),
        "synth_896x448.png": pattern(896, 448, noise_rows=64),
        "synth_1344x896.png": pattern(1344, 896, noise_rows=32),
        "synth_640x480.png": pattern(640, 480, noise_rows=120),
        "synth_480x640.png": pattern(480, 640, noise_rows=160),
        "synth_1080x1920.png": pattern(1080, 1920, noise_rows=96),
        "synth_1920x1080.png": pattern(1920, 1080, noise_rows=48),
        # Ratio 2.5 ties (2,1) and (3,1) under max 6; area decides.
        "synth_1250x500_tie.png": pattern(1250, 500, noise_rows=50),
        "synth_500x200_tie.png": pattern(500, 200, noise_rows=60),
    }
    for name, arr in synthetic.items():
        Image.fromarray(arr, "RGB").save(f"{out}/{name}", optimize=True)
    Image.fromarray(noise(150, 350, 4), "RGBA").save(f"{out}/synth_rgba_150x350.png", optimize=True)
    Image.fromarray(noise(233, 122, 2), "LA").save(f"{out}/synth_la_233x122.png", optimize=True)

    with zipfile.ZipFile(wheel) as z:
        def sample(name):
            return Image.open(io.BytesIO(z.read(f"skimage/data/{name}")))

        with open(f"{out}/photo_rocket.jpg", "wb") as f:
            f.write(z.read("skimage/data/rocket.jpg"))  # 640x427, as published
        with open(f"{out}/photo_retina.jpg", "wb") as f:
            f.write(z.read("skimage/data/retina.jpg"))  # 1411x1411
        coffee = sample("coffee.png").convert("RGB")
        coffee.save(f"{out}/photo_coffee_600x400.jpg", quality=90)
        coffee.transpose(Image.Transpose.ROTATE_90).save(f"{out}/photo_coffee_400x600.jpg", quality=85)
        sample("chelsea.png").save(f"{out}/photo_chelsea.png", optimize=True)
        sample("camera.png").save(f"{out}/photo_camera_L.png", optimize=True)
        sample("logo.png").save(f"{out}/photo_logo_RGBA.png", optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
