"""Fit the detail rule (llie.method.detail) on refined photos the refiner never trained on.

Each photo is scored at a grid of amounts; its label is the amount of highest SSIM among those that cost
no PSNR, so the rule may trade nothing of PSNR for SSIM; a ridge regression of the labels on the rule's
three inputs gives its weights (docs/method.md, "Detail").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from llie.method.detail import DetailRule, adjust_detail, coarse_texture, rule_inputs
from llie.method.mapping import MappingConfig
from llie.method.policy import (
    AfterRefiner,
    EnhancePolicy,
    channel_means,
    map_under_policy,
    mean_luma,
    refine_under_policy,
)
from llie.metrics import psnr, quantize8, ssim

AMOUNTS = (-1.0, -0.6, -0.3, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
RIDGE = 3.0  # on standardised inputs
MIN_PHOTOS = 8


def best_amount(refined: np.ndarray, target: np.ndarray) -> float:
    """The amount of AMOUNTS whose output has the highest SSIM against ``target`` and no lower PSNR than
    the refined photo's own (8-bit outputs, as written)."""
    scores = []
    for amount in AMOUNTS:
        out = quantize8(np.clip(adjust_detail(refined, amount), 0.0, 1.0)) / 255.0
        scores.append((psnr(out, target), ssim(out, target)))
    floor = scores[AMOUNTS.index(0.0)][0]
    allowed = [(s, a) for (p, s), a in zip(scores, AMOUNTS) if p >= floor]
    return max(allowed)[1]


def refined_before_detail(
    source: np.ndarray,
    quantiles: np.ndarray,
    keep: float,
    mapping: MappingConfig,
    policy: EnhancePolicy,
    refine: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Stages 3 and 4 under the policy, up to where the rule acts (before the black point is held)."""
    mapped, _ = map_under_policy(source, quantiles, mapping, policy)
    return refine_under_policy(source, mapped, refine, replace(policy, black_point_knee=0.0), after=AfterRefiner(keep))


def fit_detail_rule(
    sources: list[np.ndarray],
    refined: list[np.ndarray],
    targets: list[np.ndarray],
    keeps: list[float],
    progress: bool = False,
) -> tuple[DetailRule | None, dict]:
    """The rule from photos the refiner never saw, and a record for the manifest's metrics (None under
    MIN_PHOTOS photos: too few to fit three weights)."""
    if len(sources) < MIN_PHOTOS:
        return None, {"photos": len(sources), "fit": False}
    x = np.array(
        [rule_inputs(mean_luma(channel_means(s)), coarse_texture(r), k) for s, r, k in zip(sources, refined, keeps)]
    )
    pairs = tqdm(list(zip(refined, targets)), desc="detail labels", disable=not progress, leave=False)
    y = np.array([best_amount(r, t) for r, t in pairs])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # an input that never varies (one kind of capture) gets no weight
    z = (x - mean) / scale
    weights = np.linalg.solve(z.T @ z + RIDGE * np.eye(3), z.T @ (y - y.mean())) / scale
    rule = DetailRule(
        bias=float(y.mean() - weights @ mean),
        luma=float(weights[0]),
        texture=float(weights[1]),
        keep=float(weights[2]),
        lowest=AMOUNTS[0],
        highest=AMOUNTS[-1],
    )
    record = {"photos": len(y), "fit": True, "mean_label": round(float(y.mean()), 3)}
    return rule, record
