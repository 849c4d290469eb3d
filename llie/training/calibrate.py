"""Fitting a bundle's exposure offset and gamma to a few pairs from an archive (``llie calibrate``).

Each pair's stage-3 output is scored on a grid of offsets and gammas; the fit is the setting of the highest
mean PSNR (a new capture series' references differ from the training series' in contrast, not only in
brightness). Each pair is also scored at the setting fit without its scene: that gain is the one that
carries over to the archive's other photos, and the fit is adopted only where its 80 % interval (scenes
resampled) lies above 0: a few pairs of an archive whose taste the model already meets would otherwise
pull it off, at a cost to its other photos (docs/method.md, "Calibrating to an archive"; ``python -m
benchmarks.calibration``). Stage 3 suffices: the refiner keeps stage 3's channel means and passes the
tones on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from llie.method.bundle import Bundle
from llie.method.exposure_offset import ExposureOffset, offset_quantiles
from llie.method.features import extract_features
from llie.method.mapping import match_to_quantiles
from llie.method.policy import channel_means, map_under_policy, stage3_weight
from llie.method.working_size import WorkingSize, area_downscale, working_shape
from llie.metrics import psnr, quantize8
from llie.stats import clustered_difference
from llie.training.data import Pair, load_rgb
from llie.training.palette import palette_of, palette_psnr, target_terms

GRID = np.round(np.arange(-12, 13) / 6, 4)  # offsets tried, in stops: -2 to 2 by a sixth
GAMMAS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4)  # gammas tried with each offset
# the confidence of the interval that must lie above 0: 95 % kept real half-stop offsets out too often
ADOPT_CONFIDENCE = 0.8


@dataclass(frozen=True)
class Calibration:
    fitted: tuple[float, float]  # the (stops, gamma) of the highest mean PSNR on the pairs
    written: tuple[float, float]  # the setting to write: ``fitted`` where its gain carries over, else the bundle's own
    pairs: int
    scenes: int
    before: float  # mean stage-3 PSNR at the bundle's own offset
    after: float  # the same pairs, each at the setting fit without its scene
    interval: tuple[float, float]  # ADOPT_CONFIDENCE interval of after - before, scenes resampled

    def record(self) -> dict:
        """The fit for ``metrics.calibration`` (``derive_bundle`` stores it as JSON: tuples become lists)."""
        return {
            **asdict(self),
            "confidence": ADOPT_CONFIDENCE,
            "grid_stops": [float(GRID[0]), float(GRID[-1])],
            "grid_gammas": [GAMMAS[0], GAMMAS[-1]],
        }


def pair_at_working_size(pair: Pair, working: WorkingSize = WorkingSize()) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) at most the working size, area-averaged alike, as ``llie enhance`` sees a large photo."""
    low, high = load_rgb(pair.low), load_rgb(pair.high)
    if low.shape != high.shape:
        raise ValueError(
            f"pair {pair.name}: the low image is {low.shape[1]}x{low.shape[0]}, the high one {high.shape[1]}x{high.shape[0]}"
        )
    if max(low.shape[:2]) > working.long_side:
        shape = working_shape(low.shape[0], low.shape[1], working.long_side)
        low, high = area_downscale(low, shape), area_downscale(high, shape)
    return low, high


def tone_grid(stops: np.ndarray = GRID, gammas: tuple[float, ...] = GAMMAS) -> np.ndarray:
    """(n, 2): every (stops, gamma) of the two grids."""
    s, g = np.meshgrid(stops, gammas, indexing="ij")
    return np.column_stack([s.ravel(), g.ravel()])


def grid_index(setting: tuple[float, float], grid: np.ndarray) -> int:
    """The row of ``grid`` (n, 2) nearest ``setting`` (stops, gamma)."""
    return int(np.argmin(np.abs(grid - np.asarray(setting)).sum(axis=1)))


def offset_psnrs(
    low: np.ndarray, quantiles: np.ndarray, targets: list[np.ndarray], bundle: Bundle, grid: np.ndarray
) -> np.ndarray:
    """(targets, settings) stage-3 PSNR of ``low`` mapped onto ``quantiles`` moved by each (stops, gamma) of
    ``grid`` (under the bundle's mapping and policy), against each of ``targets``."""
    # where stage 3 acts in full, a pixel's result follows from its colour alone: score colour by colour
    # (a photo that stage 3 blends with itself, a brighter one, is scored pixel by pixel)
    palette = palette_of(low) if stage3_weight(channel_means(low), bundle.policy) == 1.0 else None
    terms = [] if palette is None else [target_terms(palette, target) for target in targets]
    table = np.empty((len(targets), len(grid)))
    for j, (stops, gamma) in enumerate(grid):
        moved = offset_quantiles(quantiles, float(stops), float(gamma))
        if palette is None:
            out = quantize8(map_under_policy(low, moved, bundle.mapping, bundle.policy)[0]) / 255.0
            table[:, j] = [psnr(out, target) for target in targets]
        else:
            mapped = match_to_quantiles(palette.colours, moved, bundle.mapping, counts=palette.counts)
            table[:, j] = [palette_psnr(palette, quantize8(mapped) / 255.0, term) for term in terms]
    return table


def psnr_table(bundle: Bundle, pairs: list[Pair], grid: np.ndarray, progress: bool = True) -> np.ndarray:
    """(pairs, settings) stage-3 PSNR of each pair with each (stops, gamma) of ``grid`` in place of the
    bundle's."""
    bare = replace(bundle, exposure_offset=None)
    table = np.empty((len(pairs), len(grid)))
    for i, pair in enumerate(tqdm(pairs, desc="calibrate", disable=not progress)):
        low, high = pair_at_working_size(pair)
        quantiles, _ = bare.predict_quantiles(extract_features(low, None, bundle.quantile_model.config.features))
        table[i] = offset_psnrs(low, quantiles, [high], bundle, grid)[0]
    return table


def fit_offset(table: np.ndarray, groups: list[str], current: tuple[float, float], grid: np.ndarray) -> Calibration:
    """The (stops, gamma) of the highest mean PSNR over ``table`` (pairs x ``grid`` rows) and the gain it
    carries over (each scene scored at the setting fit on the others, against the bundle's ``current``
    one), adopted where that gain's interval lies above 0."""
    groups_arr = np.asarray(groups)
    scenes = np.unique(groups_arr)
    if len(scenes) < 2:
        raise ValueError(f"calibration needs pairs of at least 2 scenes, got {len(scenes)}")
    best = int(np.argmax(table.mean(axis=0)))
    now = grid_index(current, grid)
    after = np.empty(len(table))
    for scene in scenes:
        held = groups_arr == scene
        after[held] = table[held, int(np.argmax(table[~held].mean(axis=0)))]
    gain = clustered_difference(after - table[:, now], groups_arr, confidence=ADOPT_CONFIDENCE)
    carries = gain["interval"][0] > 0.0
    fitted = (float(grid[best, 0]), float(grid[best, 1]))
    return Calibration(
        fitted=fitted,
        written=fitted if carries else (float(current[0]), float(current[1])),
        pairs=len(table),
        scenes=len(scenes),
        before=float(table[:, now].mean()),
        after=float(after.mean()),
        interval=(float(gain["interval"][0]), float(gain["interval"][1])),
    )


def calibrate(bundle: Bundle, pairs: list[Pair], progress: bool = True) -> Calibration:
    """Fit ``bundle``'s exposure offset and gamma to ``pairs`` (see the module docstring)."""
    own = bundle.exposure_offset or ExposureOffset()
    current = (own.stops, own.gamma)
    grid = np.unique(np.vstack([tone_grid(), current]), axis=0)
    return fit_offset(psnr_table(bundle, pairs, grid, progress), [p.group for p in pairs], current, grid)


def calibrated_settings(stops: float, gamma: float = 1.0) -> dict:
    """The manifest section ``derive_bundle`` writes for an offset and gamma."""
    return {"exposure_offset": ExposureOffset(float(stops), float(gamma)).section()}
