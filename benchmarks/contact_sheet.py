"""Photos without references, side by side: the input, a simple peer (a gamma that brings the mean luma
to 0.45), and one or two bundles; with each output's share of saturated pixels whose hue turned by more
than 45 degrees (HSV saturation above 0.3, value above 0.08 in the input), the measure the model card
reports. Not part of ``make bench``:

    python -m benchmarks.contact_sheet ../shared/datasets/unpaired-real --out docs/contact-sheet.jpg \\
        --baseline OLD_BUNDLE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from llie.method.mapping import LUMA, hue_turn

THUMB = 240  # long side of each cell, pixels
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def auto_gamma(rgb: np.ndarray, target: float = 0.45) -> np.ndarray:
    """The peer: one gamma for the whole photo, chosen so that its mean luma becomes ``target``."""
    luma = float(np.clip(rgb @ LUMA, 1e-4, 1).mean())
    gamma = np.log(target) / np.log(luma) if 1e-4 < luma < 1 else 1.0
    return np.clip(rgb, 0, 1) ** gamma


def hue_turned_share(before: np.ndarray, after: np.ndarray) -> float:
    """Share of the input's saturated pixels whose hue turned by more than 45 degrees."""
    top, bottom = before.max(axis=2), before.min(axis=2)
    saturated = ((top - bottom) / np.maximum(top, 1e-6) > 0.3) & (top > 0.08)
    if not saturated.any():
        return 0.0
    return float((hue_turn(before[saturated], after[saturated]) > 45).mean())


def _thumb(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return ImageOps.contain(image, (THUMB, THUMB))


def _sheet(rows: list[list[Image.Image]], labels: list[str]) -> Image.Image:
    cell = THUMB + 4
    sheet = Image.new("RGB", (cell * len(labels), 18 + cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((c * cell + 4, 3), label, fill="black")
    for r, row in enumerate(rows):
        for c, thumb in enumerate(row):
            sheet.paste(thumb, (c * cell + 2, 18 + r * cell + 2))
    return sheet


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)


def contact_sheet(paths: list[Path], bundles: dict[str, str | None]) -> tuple[Image.Image, dict]:
    """The sheet and, per bundle and per photo, the hue-turned share (the peer's too)."""
    from llie.method.pipeline import Enhancer

    enhancers = {name: Enhancer.load(path, device="cpu") for name, path in bundles.items()}
    rows, shares = [], {name: {} for name in ["gamma", *enhancers]}
    for path in paths:
        with Image.open(path) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / np.float32(255)
        outputs = {"gamma": auto_gamma(rgb)} | {n: e.enhance(rgb).image for n, e in enhancers.items()}
        for name, out in outputs.items():
            shares[name][path.name] = hue_turned_share(rgb, out)
        rows.append([_thumb(rgb), *(_thumb(o) for o in outputs.values())])
    summary = {
        name: {"mean": float(np.mean(list(s.values()))), "max": max(s.values()), "worst": max(s, key=s.get)}
        for name, s in shares.items()
    }
    return _sheet(rows, ["input", *outputs]), {"summary": summary, "per_photo": shares}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="photos to enhance, searched recursively")
    parser.add_argument("--out", type=Path, required=True, help="the sheet (JPEG or PNG)")
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped model)")
    parser.add_argument("--baseline", default=None, help="a second bundle, shown beside the first")
    parser.add_argument("--only", nargs="*", default=None, help="file names to show (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the hue figures here")
    args = parser.parse_args(argv)
    paths = [p for p in photos(args.folder) if not args.only or p.name in args.only]
    bundles = {"llie": args.model} | ({"baseline": args.baseline} if args.baseline else {})
    sheet, figures = contact_sheet(paths, bundles)
    sheet.save(args.out, quality=88)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures["summary"], indent=2))


if __name__ == "__main__":
    main()
