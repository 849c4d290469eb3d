"""How much of a paired set's target brightness no exposure model can know.

Where one scene has several distinct targets (LOL re-shoots a view and takes another exposure for its
reference), their spread in log mean luma, pooled over scenes, is a floor under the error of any model
that sees only the scene, unless the dark shots tell the re-shoots apart. Whether they do shows in the
within-scene correlation of the targets' deviations from their scene's mean with the model's outputs'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from llie.method.capture_gate import implied_luma
from llie.training.capture_gate import log_lumas, set_name
from llie.training.data import Pair


@dataclass(frozen=True)
class ExposureFloor:
    sd: float  # pooled within-scene standard deviation of the targets' log mean luma; nan: no such scene
    scenes: int  # scenes with more than one distinct target
    targets: int  # distinct targets in those scenes
    # correlation of the targets' and the outputs' deviations from their scene means; nan: undefined
    within_scene_correlation: float


def exposure_floor(target_log_luma, output_log_luma, scenes, targets) -> ExposureFloor:
    """Per pair: the target's and the model's output's log mean luma, the pair's scene and its target's id
    (pairs that share a target count it once, with their outputs averaged)."""
    target_log_luma, output_log_luma = (
        np.asarray(a, dtype=np.float64).ravel() for a in (target_log_luma, output_log_luma)
    )
    scenes, targets = np.asarray(scenes).ravel(), np.asarray(targets).ravel()
    if not target_log_luma.size == output_log_luma.size == scenes.size == targets.size:
        raise ValueError("one target luma, output luma, scene and target id per pair")
    shots: dict[tuple, tuple[float, list[float]]] = {}
    for t, o, scene, target in zip(target_log_luma, output_log_luma, scenes, targets):
        shots.setdefault((scene, target), (t, []))[1].append(o)
    by_scene: dict = {}
    for (scene, _), (t, outputs) in shots.items():
        by_scene.setdefault(scene, []).append((t, np.mean(outputs)))
    deviations = [np.asarray(v) - np.mean(v, axis=0) for v in by_scene.values() if len(v) > 1]
    if not deviations:
        return ExposureFloor(float("nan"), 0, 0, float("nan"))
    d = np.concatenate(deviations)
    dof = len(d) - len(deviations)  # each scene's mean takes one degree of freedom
    spread = d.std(axis=0)
    correlation = float(np.corrcoef(d.T)[0, 1]) if spread.min() > 0 else float("nan")
    return ExposureFloor(float(np.sqrt((d[:, 0] ** 2).sum() / dof)), len(deviations), len(d), correlation)


def target_ids(highs) -> np.ndarray:
    """One id per target image, the same for identical pixels (pairs that share a target)."""
    return np.array([hashlib.sha256(np.ascontiguousarray(h).tobytes()).hexdigest() for h in highs])


def exposure_by_set(pairs: list[Pair], highs, quantiles: np.ndarray) -> dict[str, dict]:
    """Per training set, from stage 2's out-of-fold ``quantiles`` of each pair: the spread of the targets'
    log mean luma, of stage 2's error in it, and the set's exposure floor (a record for the manifest)."""
    names = np.array([set_name(p) for p in pairs])
    truth = log_lumas(highs)
    predicted = np.log([max(implied_luma(q), 1e-6) for q in quantiles])
    targets, scenes = target_ids(highs), np.array([p.group for p in pairs])
    record = {}
    for name in sorted(set(names)):
        sel = names == name
        floor = exposure_floor(truth[sel], predicted[sel], scenes[sel], targets[sel])
        record[str(name)] = {
            "target_sd": round(float(truth[sel].std()), 4),
            "error_sd": round(float((predicted[sel] - truth[sel]).std()), 4),
            "floor": {
                "sd": _finite(floor.sd),
                "scenes": floor.scenes,
                "targets": floor.targets,
                "within_scene_correlation": _finite(floor.within_scene_correlation),
            },
        }
    return record


def _finite(value: float) -> float | None:
    return round(value, 4) if np.isfinite(value) else None  # JSON has no NaN
