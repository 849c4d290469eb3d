"""How far a mean over a few images can be trusted: bootstrap intervals.

A benchmark like LOL-v1 eval15 is 15 images whose PSNRs spread over 15 dB, so its mean would move by
about 2 dB either way with another draw of images. Two models scored on the same images are compared
by their per-image differences, which cancel most of what makes one image harder than another: the
interval of the mean difference is much narrower than either model's own interval.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from scipy.stats import bootstrap

# Above this many values the mean is normal to well within what a report prints, and a bootstrap
# would cost thousands of passes over an archive's rows.
BOOTSTRAP_MAX_VALUES = 2000


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (resampled with replacement).

    For a paired comparison pass the per-item differences. Fixed ``seed``: the same values always give
    the same interval, so reports do not flicker between runs.
    """
    values = _checked(values, confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if values.size == 1:  # every resample is the one value; scipy refuses a single observation
        return float(values[0]), float(values[0])
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        # batches so that 10k resamples of a large set never hold a resamples x n index array
        batch=max(1, (1 << 20) // values.size),
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of the mean for any number of values: the bootstrap up to ``BOOTSTRAP_MAX_VALUES``,
    the normal approximation (mean +- z * standard error) above, where the two agree."""
    values = _checked(values, confidence)
    if values.size <= BOOTSTRAP_MAX_VALUES:
        return bootstrap_interval(values, confidence)
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def paired_difference(differences, confidence: float = 0.95) -> dict:
    """Mean of per-item differences (model minus baseline on the same items), its bootstrap interval,
    and how many items got better and worse: an interval that holds 0 does not show a difference."""
    differences = _checked(differences, confidence)
    low, high = bootstrap_interval(differences, confidence)
    return {
        "difference": float(differences.mean()),
        "interval": [low, high],
        "better": int(np.sum(differences > 0)),
        "worse": int(np.sum(differences < 0)),
    }


def clustered_difference(
    differences, clusters, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> dict:
    """``paired_difference`` for items that come in clusters which move together, such as the pairs of one
    scene: the interval resamples whole clusters, so ten shots of one scene count as one piece of evidence,
    not ten. The mean is over items, as the resampled means are (sums over drawn clusters over their counts)."""
    differences = _checked(differences, confidence)
    clusters = np.asarray(clusters).ravel()
    if clusters.shape != differences.shape:
        raise ValueError(f"{differences.size} differences but {clusters.size} cluster labels")
    _, index = np.unique(clusters, return_inverse=True)
    n = int(index.max()) + 1
    sums, counts = np.bincount(index, differences, n), np.bincount(index, None, n)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, (1 << 20) // n)
    for start in range(0, resamples, chunk):
        pick = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means[start : start + len(pick)] = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {
        "difference": float(differences.mean()),
        "interval": [float(low), float(high)],
        "clusters": n,
        "better": int(np.sum(differences > 0)),
        "worse": int(np.sum(differences < 0)),
    }


def _checked(values, confidence: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("an interval of the mean needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if not np.all(np.isfinite(values)):
        raise ValueError("an interval of the mean needs finite values (an identical pair has an infinite PSNR)")
    return values
