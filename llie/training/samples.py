"""The demo's sample photos: scikit-image's public-domain / CC0 sample photos, darkened with ``llie.training.synth``.

``python -m llie.training.samples`` regenerates ``llie/assets/samples/{low,high}`` deterministically; the results
are committed so the demo needs nothing but the installed package.

Sources (scikit-image ``skimage.data``): astronaut (NASA, public domain), coffee (Rachel Michetti, CC0),
chelsea (Stefan van der Walt, CC0), rocket (SpaceX, public domain).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from llie.training.synth import SynthConfig, darken

SOURCES = {"astronaut.png": "astronaut", "coffee.png": "coffee", "chelsea.png": "chelsea", "rocket.jpg": "rocket"}


def samples_dir() -> Path:
    return Path(__file__).parents[1] / "assets" / "samples"


def make_samples(dest: Path = samples_dir(), seed: int = 7) -> list[Path]:
    import skimage.data

    written = []
    for i, (name, source) in enumerate(sorted(SOURCES.items())):
        high = getattr(skimage.data, source)()
        low = darken(
            high.astype(np.float32) / 255.0,
            np.random.default_rng(seed + i),
            SynthConfig(exposure=(0.02, 0.04), shot_noise=(0.0003, 0.001), read_noise=(0.001, 0.003)),
        )
        for kind, pixels in (("high", high), ("low", np.clip(np.rint(low * 255), 0, 255).astype(np.uint8))):
            path = dest / kind / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=92) if name.endswith(".jpg") else Image.fromarray(pixels).save(
                path
            )
            written.append(path)
    return written


if __name__ == "__main__":
    for p in make_samples():
        print(p)
