"""The illumination net between stages 3 and 4: identity at start, mean luma kept, size-independent,
trainable on a CPU in seconds, carried by a bundle (hashed, required, in the model version)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_synthetic import pairs
from PIL import Image

from llie.method.bundle import ILLUMINATION_FILE, MANIFEST, Bundle, BundleError, load_bundle, save_bundle
from llie.method.illumination import LUMA, IlluminationConfig, IlluminationNet, gain_map, relight
from llie.method.mapping import MappingConfig
from llie.method.pipeline import Enhancer
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows
from llie.method.refiner import Refiner, RefinerConfig
from llie.training.config import IlluminationTrainConfig
from llie.training.illumination import grid_pairs, illumination_loss, train_illumination

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _perturbed(seed: int = 0) -> IlluminationNet:
    """A net whose map is not flat: random weights in its last layer."""
    torch.manual_seed(seed)
    net = IlluminationNet()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
    return net.eval()


def _photo(height: int = 120, width: int = 180, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = 0.15 + 0.5 * x[..., None] * np.array([1.0, 0.8, 0.6]) + 0.1 * y[..., None]
    return np.clip(base + rng.normal(0, 0.01, (height, width, 3)), 0, 1).astype(np.float32)


def test_an_untrained_net_leaves_the_photo_as_it_is():
    photo = _photo()
    assert np.array_equal(gain_map(IlluminationNet().eval(), photo), np.ones(photo.shape[:2], np.float32))
    assert np.allclose(relight(IlluminationNet().eval(), photo), photo, atol=1e-6)


def test_the_gains_vary_but_keep_the_mean_luma_on_the_grid():
    net = _perturbed()
    small = torch.from_numpy(_photo(32, 48)).permute(2, 0, 1)[None]
    with torch.no_grad():
        gains = net(small)
    luma = (small * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert float(gains.std()) > 0.01  # a map, not a constant
    assert float((luma * gains).mean()) == pytest.approx(float(luma.mean()), rel=1e-4)


def test_the_map_does_not_depend_on_the_photos_size():
    net = _perturbed()
    photo = _photo(120, 180)
    big = np.asarray(
        Image.fromarray((photo * 255).round().astype(np.uint8)).resize((720, 480), Image.Resampling.BICUBIC),
        np.float32,
    ) / np.float32(255)
    small_map = gain_map(net, photo)
    big_map = gain_map(net, big)
    shrunk = big_map.reshape(120, 4, 180, 4).mean(axis=(1, 3))
    assert np.abs(shrunk - small_map).max() < 0.02


def test_training_learns_where_the_light_should_fall():
    # inputs dark on the left, targets evenly lit: a flat gain cannot fit them, a learned map can
    rng = np.random.default_rng(0)
    mapped, targets = [], []
    for _ in range(12):
        level = rng.uniform(0.3, 0.6)
        target = np.full((48, 72, 3), level, np.float32) + rng.normal(0, 0.01, (48, 72, 3)).astype(np.float32)
        dark = target.copy()
        dark[:, : 72 // 2] *= 0.4
        mapped.append(np.clip(dark, 0, 1))
        targets.append(np.clip(target, 0, 1))
    data = grid_pairs(mapped, targets, IlluminationConfig().grid)
    x = torch.from_numpy(np.stack([d[0] for d in data])).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.stack([d[1] for d in data])).permute(0, 3, 1, 2)
    with torch.no_grad():
        before = float(illumination_loss(IlluminationNet(), x, y))
    net = train_illumination(data, IlluminationTrainConfig(steps=150, batch=8, lr=5e-3), progress=False)
    with torch.no_grad():
        after = float(illumination_loss(net, x, y))
    assert after < 0.3 * before
    gains = gain_map(net, mapped[0])
    assert gains[:, :20].mean() > 1.5 * gains[:, -20:].mean()  # the dark half lifted more


def _bundle(illumination: IlluminationNet | None) -> Bundle:
    cfg = QuantileModelConfig(n_estimators=5, augmentations=2, min_child_weight=2.0)
    lows, highs = pairs(6, seed=0)
    rng = np.random.default_rng(0)
    x, y = zip(*(augmented_rows(l, h, rng, cfg.augmentations) for l, h in zip(lows, highs)))
    model = QuantileModel.fit(np.concatenate(x), np.concatenate(y), cfg, n_threads=1)
    refiner = Refiner(RefinerConfig(dim=16, depth=1, heads=2, detail_channels=0)).eval()
    return Bundle(model, MappingConfig("kde", 0.02), refiner, illumination=illumination)


def test_a_bundle_carries_its_illumination_net(tmp_path):
    net = _perturbed()
    manifest = save_bundle(_bundle(net), tmp_path / "with")
    plain = save_bundle(_bundle(None), tmp_path / "without")
    assert ILLUMINATION_FILE in manifest["files"] and manifest["illumination"]["grid"] == net.cfg.grid
    assert ILLUMINATION_FILE not in plain["files"] and plain["illumination"] is None
    assert manifest["model_version"] != plain["model_version"]
    loaded = load_bundle(tmp_path / "with")
    photo = _photo(40, 60)
    assert np.allclose(gain_map(loaded.illumination, photo), gain_map(net, photo), atol=1e-6)
    assert load_bundle(tmp_path / "with", refiner=False).illumination is None  # stages 1-3 alone: no torch
    # stage 4 relights before refining: the same bundle without its net gives another photo
    dark = (_photo(40, 60) * 0.2).astype(np.float32)
    with_net = Enhancer(loaded, device="cpu").enhance(dark).image
    without = Enhancer(load_bundle(tmp_path / "without"), device="cpu").enhance(dark).image
    assert np.abs(with_net - without).max() > 1e-3


def test_an_unlisted_illumination_file_is_refused(tmp_path):
    save_bundle(_bundle(_perturbed()), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["files"][ILLUMINATION_FILE]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        load_bundle(tmp_path)


def test_bundles_from_before_the_illumination_net_keep_their_version(tmp_path):
    from llie.method.bundle import manifest_version

    plain = save_bundle(_bundle(None), tmp_path)
    earlier = {k: v for k, v in plain.items() if k != "illumination"}  # as written before the net existed
    assert manifest_version(earlier) == manifest_version(plain) == plain["model_version"]


def test_nonsense_illumination_settings_are_refused_before_loading(tmp_path):
    from llie.method.bundle import manifest_version

    save_bundle(_bundle(_perturbed()), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["illumination"]["grid"] = 10**9
    manifest["model_version"] = manifest_version(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="illumination.grid"):
        load_bundle(tmp_path)
