"""Paired data sets in LOL layout: ``low/`` and ``high/`` folders of same-named images.

Several low exposures of one scene may share a byte-identical target, so validation is split by the
target's content hash: splitting by file name would put one scene on both sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Pair:
    name: str
    low: Path
    high: Path
    group: str  # content hash of the target: pairs sharing a target share a group


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def find_pairs(root: str | Path) -> list[Pair]:
    """Pairs under ``root/low`` and ``root/high`` (same relative names), sorted by name."""
    root = Path(root)
    low_dir, high_dir = root / "low", root / "high"
    if not low_dir.is_dir() or not high_dir.is_dir():
        raise FileNotFoundError(f"{root} has no low/ and high/ folders (LOL layout)")
    pairs = []
    for low in sorted(low_dir.rglob("*")):
        if low.suffix.lower() not in IMAGE_SUFFIXES or low.name.startswith("."):
            continue
        rel = low.relative_to(low_dir)
        high = high_dir / rel
        if high.exists():
            pairs.append(Pair(rel.as_posix(), low, high, _digest(high)))
    if not pairs:
        raise FileNotFoundError(f"no same-named image pairs under {low_dir} and {high_dir}")
    return pairs


def resolve_training_sets(data: str | Path) -> tuple[list[Pair], list[Pair]]:
    """(train, eval) pairs: ``DIR/our485`` + ``DIR/eval15`` when present, else ``DIR`` itself and no eval."""
    data = Path(data)
    if (data / "our485").is_dir():
        evaluation = find_pairs(data / "eval15") if (data / "eval15").is_dir() else []
        return find_pairs(data / "our485"), evaluation
    return find_pairs(data), []


def split_by_group(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Train/validation split that never separates pairs sharing a target."""
    groups = sorted({p.group for p in pairs})
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = int(round(len(groups) * val_fraction)) if len(groups) > 1 else 0
    val_groups = set(groups[:n_val])
    return [p for p in pairs if p.group not in val_groups], [p for p in pairs if p.group in val_groups]


def group_folds(pairs: list[Pair], n_folds: int, seed: int) -> np.ndarray:
    """Fold index per pair, constant within a group (for out-of-fold predictions)."""
    groups = sorted({p.group for p in pairs})
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    fold_of = {g: i % n_folds for i, g in enumerate(groups)}
    return np.array([fold_of[p.group] for p in pairs])


def load_rgb(path: Path) -> np.ndarray:
    """Float32 HxWx3 in [0, 1]; training data is trusted, 8-bit RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_pairs(pairs: list[Pair]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [load_rgb(p.low) for p in pairs], [load_rgb(p.high) for p in pairs]
