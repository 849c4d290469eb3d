"""How much of a paired set's target brightness no exposure model can know.

Where one scene has several distinct targets (LOL re-shoots a view and takes another exposure for its
reference), their spread in log mean luma, pooled over scenes, is a floor under the error of any model
that sees only the scene, unless the dark shots tell the re-shoots apart. Whether they do shows in the
within-scene correlation of the targets' deviations from their scene's mean with the model's outputs'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
