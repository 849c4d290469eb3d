"""Paired data sets in LOL layout: ``low/`` and ``high/`` folders of same-named images (PNG, JPEG, ...).

Several low exposures of one scene may share a byte-identical target, and LOL also holds the same
scene shot again with a slightly different target (docs/method.md counts them in our485). Validation and out-of-fold splits must keep a scene on one
side, or they measure memory of the scene: pairs are grouped by the target's content hash and,
transitively, by a strong correlation of the targets' thumbnails. A set that names its scenes (SICE-pairs'
``pairs.json``: one ``{"name", "scene"}`` entry per pair) starts from those scenes; thumbnails may still join
two of them, never split one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Pair:
    name: str
    low: Path
    high: Path
    group: str  # one id per scene: pairs sharing a target, or a near-identical one, share a group


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def named_scenes(root: Path) -> dict[str, str]:
    """Pair name -> scene id from ``root/pairs.json`` when the set names its scenes, else empty."""
    path = root / "pairs.json"
    if not path.is_file():
        return {}
    entries = json.loads(path.read_text())
    entries = entries["pairs"] if isinstance(entries, dict) else entries
    return {e["name"]: f"scene:{e['scene']}" for e in entries if "name" in e and "scene" in e}


def find_pairs(root: str | Path) -> list[Pair]:
    """Pairs under ``root/low`` and ``root/high`` (same relative names), sorted by name."""
    root = Path(root)
    low_dir, high_dir = root / "low", root / "high"
    if not low_dir.is_dir() or not high_dir.is_dir():
        raise FileNotFoundError(f"{root} has no low/ and high/ folders (LOL layout)")
    scenes = named_scenes(root)
    pairs = []
    for low in sorted(low_dir.rglob("*")):
        if low.suffix.lower() not in IMAGE_SUFFIXES or low.name.startswith("."):
            continue
        rel = low.relative_to(low_dir)
        high = high_dir / rel
        if high.exists():
            pairs.append(Pair(rel.as_posix(), low, high, scenes.get(rel.as_posix()) or _digest(high)))
    if not pairs:
        raise FileNotFoundError(f"no same-named image pairs under {low_dir} and {high_dir}")
    return group_scenes(pairs)


# Thumbnail size and the correlation above which two targets count as one scene: re-shots of one view
# correlate above it, other pairs of targets far below (docs/method.md).
SCENE_THUMBNAIL = (24, 16)
SCENE_CORRELATION = 0.8


def scene_thumbnail(path: Path) -> np.ndarray:
    """Zero-mean, unit-norm grey thumbnail: dot products of two are their correlation."""
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L").resize(SCENE_THUMBNAIL, Image.Resampling.BOX), np.float64).ravel()
    grey -= grey.mean()
    norm = np.linalg.norm(grey)
    return grey / norm if norm > 0 else grey


def group_scenes(pairs: list[Pair], threshold: float = SCENE_CORRELATION) -> list[Pair]:
    """``pairs`` with ``group`` set to one id per scene (connected components of "same target or
    thumbnails correlated above ``threshold``"); the id is the smallest target hash in the scene."""
    parent = list(range(len(pairs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    thumbs = np.stack([scene_thumbnail(p.high) for p in pairs])
    similar = np.argwhere(np.triu(thumbs @ thumbs.T > threshold, k=1))
    first_with_hash: dict[str, int] = {}
    links = [tuple(ij) for ij in similar]
    for i, p in enumerate(pairs):
        links.append((first_with_hash.setdefault(p.group, i), i))
    for i, j in links:
        parent[root(int(i))] = root(int(j))
    scene_id: dict[int, str] = {}
    for i, p in enumerate(pairs):
        r = root(i)
        scene_id[r] = min(scene_id.get(r, p.group), p.group)
    return [replace(p, group=scene_id[root(i)]) for i, p in enumerate(pairs)]


def resolve_training_sets(data: str | Path | Sequence[str | Path]) -> tuple[list[Pair], list[Pair]]:
    """(train, eval) pairs of one set or several: per set ``DIR/our485`` + ``DIR/eval15`` when present, else
    ``DIR`` itself and no eval. With several sets every name and scene starts with its set's folder name,
    so names stay unique and no scene spans two sets."""
    roots = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    train, evaluation = [], []
    for root in roots:
        if (root / "our485").is_dir():
            found, held = find_pairs(root / "our485"), find_pairs(root / "eval15") if (root / "eval15").is_dir() else []
        else:
            found, held = find_pairs(root), []
        if len(roots) > 1:
            found = [replace(p, name=f"{root.name}/{p.name}", group=f"{root.name}/{p.group}") for p in found]
            held = [replace(p, name=f"{root.name}/{p.name}", group=f"{root.name}/{p.group}") for p in held]
        train += found
        evaluation += held
    return train, evaluation


def split_by_group(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Train/validation split that never separates pairs of one scene."""
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
