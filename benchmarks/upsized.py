"""One look at every size: each photo enhanced as it is, and as an enlarged copy (bicubic, the aspect kept)
and a stretched one, both shrunk back after enhancement; PSNR of each against the direct result and the
mean levels of all three. Not part of ``make bench``:

    python -m benchmarks.upsized ../shared/datasets/LOL-v1/eval15/low --only 1.png 179.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.contact_sheet import photos
from llie.metrics import psnr, quantize8

SIZES = {"enlarged": (4000, 2667), "stretched": (4000, 3000)}


def agreement(enhancer, rgb: np.ndarray, sizes: dict[str, tuple[int, int]] = SIZES) -> dict:
    """The direct result's mean level, and per size the copy's PSNR against it once shrunk back."""
    direct = quantize8(enhancer.enhance(rgb).image)
    image = Image.fromarray(quantize8(rgb))
    out = {"mean_level": float(direct.mean())}
    for name, size in sizes.items():
        big = np.asarray(image.resize(size, Image.Resampling.BICUBIC), np.float32) / np.float32(255)
        result = Image.fromarray(quantize8(enhancer.enhance(big).image))
        back = np.asarray(result.resize(image.size, Image.Resampling.BOX))
        out[name] = {"psnr_db": psnr(back / 255.0, direct / 255.0), "mean_level": float(back.mean())}
    return out


def main(argv: list[str] | None = None) -> None:
    from llie.method.pipeline import Enhancer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped model)")
    parser.add_argument("--only", nargs="*", default=None, help="file names (default: all)")
    args = parser.parse_args(argv)
    enhancer = Enhancer.load(args.model, device="cpu")
    worst = {name: np.inf for name in SIZES}
    for path in photos(args.folder):
        if args.only and path.name not in args.only:
            continue
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), np.float32) / np.float32(255)
        a = agreement(enhancer, rgb)
        cells = [f"{name} {a[name]['psnr_db']:5.1f} dB (level {a[name]['mean_level']:.1f})" for name in SIZES]
        print(f"{path.name:24s} level {a['mean_level']:6.1f} | " + " | ".join(cells))
        worst = {name: min(worst[name], a[name]["psnr_db"]) for name in SIZES}
    print("worst: " + ", ".join(f"{name} {v:.1f} dB" for name, v in worst.items()))


if __name__ == "__main__":
    main()
