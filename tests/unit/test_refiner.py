"""Stage 4: the windowed ViT refiner, padding and tiled inference, and its training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_synthetic import pairs, scene

from llie.method.refine import ENSEMBLE_TRANSFORMS, TilingConfig, _starts, dihedral, refine, undo_dihedral
from llie.method.refiner import Refiner, RefinerConfig
from llie.training.refiner_training import refiner_loss

TINY = RefinerConfig(dim=16, depth=1, heads=2, global_context=False)  # windows only
CPU = torch.device("cpu")
FORCE_TILES = TilingConfig(tile=160, overlap=80, max_side=160, batch=8)
NO_TILES = TilingConfig(max_side=4096)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def identity() -> Refiner:
    torch.manual_seed(0)
    return Refiner(TINY).eval()


def _perturbed(cfg: RefinerConfig, seed: int) -> Refiner:
    """A refiner whose heads (and context, if any) are no longer zero: a non-trivial function of its input."""
    torch.manual_seed(seed)
    model = Refiner(cfg)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        model.head.bias.normal_(0, 0.01)
        if model.context is not None:
            model.context.mlp[-1].weight.normal_(0, 0.5)
        if model.detail is not None:
            model.detail.net[-1].weight.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def perturbed() -> Refiner:
    return _perturbed(TINY, seed=1)


def test_untrained_refiner_is_the_identity(identity):
    x = torch.rand(2, 3, 80, 160)
    with torch.no_grad():
        y = identity(x)
    assert y.shape == x.shape
    assert (y - x).abs().max().item() <= 1e-6


def test_multiple_is_patch_times_window():
    assert RefinerConfig().multiple == 80
    assert RefinerConfig(patch=10, window=4).multiple == 40


@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (81, 79)])
def test_refine_keeps_odd_sizes_untiled(identity, perturbed, shape):
    rgb = np.random.default_rng(0).random(shape + (3,)).astype(np.float32)
    out = refine(identity, rgb, CPU)
    assert out.shape == rgb.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb, atol=1e-6)
    changed = refine(perturbed, rgb, CPU)
    assert changed.shape == rgb.shape
    assert changed.min() >= 0 and changed.max() <= 1


def test_refine_3x900_through_tiles(identity):
    rgb = np.random.default_rng(1).random((3, 900, 3)).astype(np.float32)
    out = refine(identity, rgb, CPU, FORCE_TILES)  # padded height 80 < tile: padded up to one tile row
    assert out.shape == rgb.shape
    np.testing.assert_allclose(out, rgb, atol=1e-6)


def test_refine_1001x999_tiled_equals_untiled_for_identity(identity, perturbed):
    rgb = scene(1001, 999, seed=2)
    assert len(_starts(1040, FORCE_TILES.tile, FORCE_TILES.tile - FORCE_TILES.overlap)) > 1
    tiled = refine(identity, rgb, CPU, FORCE_TILES)
    assert tiled.shape == rgb.shape and tiled.dtype == np.float32
    untiled = refine(identity, rgb, CPU, NO_TILES)
    np.testing.assert_allclose(tiled, untiled, atol=1e-6)
    np.testing.assert_allclose(tiled, rgb, atol=1e-6)
    # a real (non-identity) model goes through the same tiles and keeps the size too
    out = refine(perturbed, rgb[:401, :333], CPU, FORCE_TILES)
    assert out.shape == (401, 333, 3)
    assert np.isfinite(out).all()


def test_tile_starts_cover_the_image():
    for size in (160, 161, 240, 1040):
        starts = _starts(size, 160, 80)
        assert starts[0] == 0 and starts[-1] == max(size - 160, 0)
        assert all(b - a <= 80 for a, b in zip(starts, starts[1:]))


def test_refiner_loss_matches_its_definition():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 8)
    pred = target + 0.1
    loss, psnr = refiner_loss(pred, target, l1_weight=20.0)
    assert psnr.item() == pytest.approx(20.0, abs=1e-3)  # MSE 0.01 -> 20 dB
    assert loss.item() == pytest.approx(-20.0 + 20.0 * 0.1, abs=1e-3)


def test_the_ssim_term_is_the_metric_the_scores_use():
    from llie.metrics import ssim
    from llie.training.refiner_training import mean_ssim

    rng = np.random.default_rng(0)
    a = rng.random((20, 24, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    as_batch = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    assert mean_ssim(as_batch(a), as_batch(b)).item() == pytest.approx(ssim(a, b), abs=1e-9)
    mask = torch.ones(1, 1, 20, 24, dtype=torch.float64)
    mask[..., 12:] = 0  # windows reaching into the masked-out half do not count
    assert mean_ssim(as_batch(a), as_batch(b), mask).item() == pytest.approx(ssim(a[:, :12], b[:, :12]), abs=1e-9)
    target = torch.rand(2, 3, 16, 16)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    plain, _ = refiner_loss(pred, target, l1_weight=20.0)
    weighted, _ = refiner_loss(pred, target, l1_weight=20.0, ssim_weight=100.0)
    assert (weighted - plain).item() == pytest.approx(100.0 * (1 - mean_ssim(pred, target).item()), rel=1e-5)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    lows, highs = pairs(2, 80, 80, seed=3)
    # stage-3-like inputs: roughly right brightness, but noisy and with a colour cast
    rng = np.random.default_rng(0)
    inputs = [np.clip(h * np.array([0.85, 1.0, 1.1]) + rng.normal(0, 0.04, h.shape), 0, 1) for h in highs]
    x = torch.from_numpy(np.stack(inputs).astype(np.float32)).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.stack(highs).astype(np.float32)).permute(0, 3, 1, 2)
    model = Refiner(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = refiner_loss(model(x), y, l1_weight=20.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final, _ = refiner_loss(model(x), y, l1_weight=20.0)
    assert final.item() < losses[0] - 0.5, losses


CONTEXT = RefinerConfig(dim=16, depth=2, heads=2, global_context=True)


@pytest.fixture(scope="module")
def perturbed_context() -> Refiner:
    return _perturbed(CONTEXT, seed=2)


def test_untrained_context_refiner_is_the_identity():
    torch.manual_seed(0)
    model = Refiner(CONTEXT).eval()
    x = torch.rand(1, 3, 160, 240)
    with torch.no_grad():
        assert (model(x) - x).abs().max().item() <= 1e-6


def test_context_defaults_to_the_image_itself(perturbed_context):
    x = torch.rand(2, 3, 160, 240)
    with torch.no_grad():
        own = perturbed_context(x)
        given = perturbed_context(x, perturbed_context.image_context(x))
        swapped = perturbed_context(x, perturbed_context.image_context(x.flip(0)))
    torch.testing.assert_close(own, given)
    assert (own - swapped).abs().max().item() > 1e-3  # the context does steer the output


def test_tiles_see_the_whole_image_through_the_context(perturbed, perturbed_context):
    """Two photos that differ only in their bottom-right corner: the top-left tile, which never sees that
    corner, changes only when the tiles share a whole-image context."""
    rng = np.random.default_rng(5)
    a = rng.random((400, 400, 3), dtype=np.float32)
    b = a.copy()
    b[320:, 320:] = 1.0
    for model, shares_context in ((perturbed, False), (perturbed_context, True)):
        ra, rb = refine(model, a, CPU, FORCE_TILES), refine(model, b, CPU, FORCE_TILES)
        assert (np.abs(ra[:80, :80] - rb[:80, :80]).max() > 1e-4) == shares_context


@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (1001, 999)])
def test_context_refiner_keeps_odd_sizes_through_tiles(perturbed_context, shape):
    rgb = np.random.default_rng(6).random((*shape, 3), dtype=np.float32)
    out = refine(perturbed_context, rgb, CPU, FORCE_TILES)
    assert out.shape == rgb.shape and np.isfinite(out).all()
    assert np.abs(out - rgb).max() > 1e-4  # refined, not passed through


def test_detail_head_works_at_pixel_scale():
    """With the transformer's patch head at zero, the output is the input plus the detail head's
    correction: one changed pixel moves the output only within the head's 9x9 receptive field."""
    torch.manual_seed(7)
    model = Refiner(TINY).eval()
    assert model.detail is not None and TINY.detail_layers == 4
    with torch.no_grad():
        model.detail.net[-1].weight.normal_(0, 0.05)
        x = torch.rand(1, 3, 80, 80)
        bumped = x.clone()
        bumped[0, :, 40, 40] += 0.5
        change = (model(bumped) - model(x)).abs().amax(dim=1)[0]
    outside = change.clone()
    outside[36:45, 36:45] = 0
    assert change[40, 40] > 1e-3 and outside.max().item() == 0.0


def test_detail_head_gives_the_same_result_in_batch_and_one_by_one(perturbed):
    """Inference runs the full-resolution convolutions one image at a time (bounded memory); training
    runs the batch at once: both must compute the same function."""
    x = torch.rand(3, 3, 80, 160)
    assert torch.is_grad_enabled()
    batched = perturbed(x).detach()  # with autograd on, as in training: the whole batch at once
    with torch.inference_mode():
        single = torch.cat([perturbed(x[i : i + 1]) for i in range(3)])
        chunked = perturbed(x)
    torch.testing.assert_close(batched, chunked, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, chunked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("detail_channels", [TINY.detail_channels, 0])
@pytest.mark.parametrize("keep", [(80, 160), (77, 151), (1, 1), (80, 3)])
def test_keeping_part_of_the_output_computes_that_part_exactly(detail_channels, keep):
    """refine() asks only for the photo's part of its padded input: the full-resolution detail head then
    runs on that part plus its receptive field, and must give what the whole input gives there (to float
    rounding: oneDNN may choose other kernels for a narrower input)."""
    model = _perturbed(
        RefinerConfig(dim=16, depth=1, heads=2, global_context=False, detail_channels=detail_channels), 3
    )
    x = torch.rand(2, 3, 80, 160)
    with torch.inference_mode():
        whole, kept = model(x), model(x, keep=keep)
    assert kept.shape == (2, 3, *keep)
    torch.testing.assert_close(kept, whole[..., : keep[0], : keep[1]], atol=1e-6, rtol=0)


def test_refiner_without_detail_head_has_no_detail_weights():
    model = Refiner(RefinerConfig(dim=16, depth=1, heads=2, detail_channels=0))
    assert model.detail is None and not any(k.startswith("detail.") for k in model.state_dict())
    assert Refiner(TINY).detail is not None and RefinerConfig().detail_channels > 0


def test_dihedral_transforms_are_eight_distinct_invertible_views():
    a = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    seen = set()
    for k in range(8):
        t = dihedral(a, k)
        assert np.shares_memory(t, a)  # views: no photo-sized copy per transform
        np.testing.assert_array_equal(undo_dihedral(t, k), a)
        seen.add((t.shape, t.tobytes()))
    assert len(seen) == 8
    assert sorted(ENSEMBLE_TRANSFORMS[8]) == list(range(8))


@pytest.mark.parametrize("ensemble", [2, 4, 8])
@pytest.mark.parametrize("tiling", [NO_TILES, FORCE_TILES])
def test_ensemble_of_the_identity_is_the_identity(identity, ensemble, tiling):
    rgb = np.random.default_rng(8).random((83, 241, 3), dtype=np.float32)
    out = refine(identity, rgb, CPU, tiling, ensemble=ensemble)
    assert out.shape == rgb.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb, atol=1e-6)


def test_ensemble_of_two_averages_the_image_and_its_mirror(perturbed_context):
    rgb = np.random.default_rng(9).random((120, 200, 3), dtype=np.float32)
    plain = refine(perturbed_context, rgb, CPU)
    mirrored = refine(perturbed_context, np.ascontiguousarray(rgb[:, ::-1]), CPU)[:, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-4  # the model is not mirror-symmetric: the average is news
    np.testing.assert_allclose(refine(perturbed_context, rgb, CPU, ensemble=2), (plain + mirrored) / 2, atol=1e-5)


@pytest.mark.parametrize("tiling", [NO_TILES, FORCE_TILES])
def test_full_ensemble_commutes_with_rotations_and_flips(perturbed_context, tiling):
    """Averaged over all eight transforms, refining a rotated photo gives the rotated refinement: true of
    the ensemble, not of the model, so it fails if any transform is undone wrongly."""
    rgb = np.random.default_rng(10).random((170, 250, 3), dtype=np.float32)
    out = refine(perturbed_context, rgb, CPU, tiling, ensemble=8)
    for k in (1, 4, 7):
        turned = refine(perturbed_context, np.ascontiguousarray(dihedral(rgb, k)), CPU, tiling, ensemble=8)
        np.testing.assert_allclose(turned, dihedral(out, k), atol=1e-5)
    single = refine(perturbed_context, np.ascontiguousarray(dihedral(rgb, 1)), CPU, tiling)
    assert np.abs(single - dihedral(refine(perturbed_context, rgb, CPU, tiling), 1)).max() > 1e-4


@pytest.mark.parametrize("bad", [0, 3, 16])
def test_ensemble_size_is_checked(identity, bad):
    with pytest.raises(ValueError, match="ensemble must be one of"):
        refine(identity, np.zeros((8, 8, 3), np.float32), CPU, ensemble=bad)
