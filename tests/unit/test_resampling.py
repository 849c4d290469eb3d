"""Resampled copies of a training photo: the same scene, smoother noise."""

from __future__ import annotations

import numpy as np
import pytest

from llie.training.resampling import resampled_copy


def test_a_resampled_copy_shows_the_same_scene_with_smoother_noise():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.05, 0.25, 90, dtype=np.float32)[None, :, None] * np.ones((60, 1, 3), np.float32)
    photo = np.clip(ramp + rng.normal(0, 0.03, (60, 90, 3)).astype(np.float32), 0, 1)
    noise = lambda image: np.abs(np.diff(image, 2, axis=1)).mean()
    for _ in range(10):
        copy = resampled_copy(photo, rng)
        assert copy.dtype == np.float32 and copy.ndim == 3 and copy.shape[2] == 3
        assert 0.4 * 60 - 1 <= copy.shape[0] <= 1.2 * 60 + 1 and 0.4 * 90 - 1 <= copy.shape[1] <= 1.2 * 90 + 1
        assert copy.mean() == pytest.approx(photo.mean(), abs=2 / 255)
        assert noise(copy) < 0.7 * noise(photo)


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 300)])
def test_a_tiny_photo_has_a_resampled_copy(shape):
    copy = resampled_copy(np.full(shape + (3,), 0.2, np.float32), np.random.default_rng(1))
    assert copy.shape[2] == 3 and min(copy.shape[:2]) >= 1
    assert np.allclose(copy, 0.2, atol=1 / 255)
