"""End-to-end training on synthetic LOL-layout pairs: bundle, manifest, resume, reproducibility."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_synthetic import pairs, write_lol

from llie.method.bundle import MANIFEST, load_bundle, verify_bundle
from llie.method.detail import DetailRule
from llie.method.features import extract_features
from llie.method.pipeline import Enhancer
from llie.method.quantiles import QuantileModelConfig
from llie.method.refiner import RefinerConfig
from llie.training.data import resolve_training_sets, split_by_group
from llie.training.train import RefinerTrainConfig, TrainConfig, TrainingSetupError, train

N_PAIRS = 12


def _config(data: Path, output: Path, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        output=str(output),
        seed=seed,
        device="cpu",
        threads=1,
        oof_folds=2,
        bandwidths=(0.01, 0.05),
        quantile=QuantileModelConfig(n_estimators=10, augmentations=3),
        refiner=RefinerConfig(dim=16, depth=1, heads=2),
        refiner_train=RefinerTrainConfig(steps=4, batch=2, crop=80, eval_every=2, checkpoint_every=2),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trainings with the same seed on the same pairs, into two bundle directories."""
    before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("train")
    data = write_lol(root / "lol", N_PAIRS, 96, 112, seed=7)
    first = train(_config(data, root / "bundle_a"), progress=False)
    second = train(_config(data, root / "bundle_b"), progress=False)
    torch.set_num_threads(before)
    return {"data": data, "a": root / "bundle_a", "b": root / "bundle_b", "manifest_a": first, "manifest_b": second}


def _probe_features() -> np.ndarray:
    lows, _ = pairs(4, 50, 60, seed=99)
    return np.stack([extract_features(l) for l in lows])


def test_training_writes_a_loadable_bundle(runs):
    out = runs["a"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model_version"] == runs["manifest_a"]["model_version"]
    assert verify_bundle(out)["model_version"] == manifest["model_version"]
    bundle = load_bundle(out, n_threads=1)
    assert bundle.refiner is not None and bundle.refiner.cfg == RefinerConfig(dim=16, depth=1, heads=2)
    assert bundle.mapping.method == "kde" and bundle.mapping.bandwidth in (0.01, 0.05)
    assert bundle.quantile_model.config.n_estimators == 10
    low = pairs(1, 45, 67, seed=98)[0][0]
    image = Enhancer(bundle, device="cpu").enhance(low).image
    assert image.shape == low.shape and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1


def test_manifest_has_version_metrics_and_training_summary(runs):
    manifest = runs["manifest_a"]
    assert len(manifest["model_version"]) == 12
    metrics = manifest["metrics"]
    for key in ("val_stage3_psnr", "val_stage4_psnr", "train_oof_stage3_psnr", "val_oracle_quantiles_psnr"):
        assert np.isfinite(metrics[key]) and 0 < metrics[key] < 100, key
    assert set(metrics["val_stage3_psnr_by_mapping"]) == {"interp", "kde_0.01", "kde_0.05"}
    assert metrics["mapping"] == manifest["mapping"]
    assert [h["step"] for h in metrics["refiner_history"]] == [2, 4]
    training = manifest["training"]
    assert training["pairs"] == N_PAIRS
    assert training["target_groups"] == N_PAIRS
    assert training["validation_pairs"] == 2  # round(12 * 0.15) groups
    assert metrics["detail"] == {"photos": 2, "fit": False} and manifest["detail"] is None  # too few to fit
    assert training["stage2_refit_on_all_pairs"] is True
    assert training["seed"] == 0
    assert training["config"]["refiner_train"]["steps"] == 4
    assert set(training["seconds"]) == {"stage2", "refiner", "total"}
    assert training["refiner_trained_on"] == ["cpu"] and training["seconds"]["refiner"] > 0
    run_dir = runs["a"] / "_training"
    for name in (
        "refiner_checkpoint.pt",
        "refiner_best.pt",
        "stage2/quantiles.json",
        "stage3_inputs.npz",
        "stage2_metrics.json",
    ):
        assert (run_dir / name).is_file(), name
    assert not [p.name for p in run_dir.rglob("*.tmp")]  # every write went through a rename


def test_resume_on_a_finished_run_does_not_retrain(runs):
    out = runs["a"]
    checkpoint = out / "_training" / "refiner_checkpoint.pt"
    stamp, content = checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()
    resumed = train(_config(runs["data"], out), resume=True, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp and checkpoint.read_bytes() == content  # no new steps
    assert len(resumed["metrics"]["refiner_history"]) == len(runs["manifest_a"]["metrics"]["refiner_history"])
    assert resumed["metrics"]["refiner_history"] == runs["manifest_a"]["metrics"]["refiner_history"]
    assert resumed["model_version"] == runs["manifest_a"]["model_version"]  # the same bundle, bit for bit
    assert resumed["files"] == runs["manifest_a"]["files"]
    load_bundle(out)


@pytest.mark.parametrize("change", [{"seed": 1}, {"max_pairs": N_PAIRS - 2}])
def test_resume_refuses_the_stage2_of_another_split(runs, tmp_path, change):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(runs["a"], out)
    cfg = replace(_config(runs["data"], out), **change)
    pairs, _ = resolve_training_sets(runs["data"])
    pairs = pairs[: cfg.max_pairs] if cfg.max_pairs else pairs
    assert (
        split_by_group(pairs, cfg.val_fraction, cfg.seed)[0]
        != split_by_group(resolve_training_sets(runs["data"])[0], cfg.val_fraction, 0)[0]
    )  # the change does change the split
    with pytest.raises(TrainingSetupError, match="another training split"):
        train(cfg, resume=True, progress=False)


def test_resume_after_a_crash_inside_stage2_refits_it(runs, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(runs["a"], out)
    # a crash between writing the stage-2 model and its metrics (written last) leaves no complete stage 2
    (out / "_training" / "stage2_metrics.json").unlink()
    resumed = train(_config(runs["data"], out), resume=True, progress=False)
    assert (out / "_training" / "stage2_metrics.json").exists()
    assert resumed["metrics"]["val_stage3_psnr"] == runs["manifest_a"]["metrics"]["val_stage3_psnr"]  # same fit
    saved = np.load(out / "_training" / "stage3_inputs.npz")
    assert len(saved["train_names"]) + len(saved["val_names"]) == N_PAIRS


def test_resume_with_another_refiner_architecture_is_a_setup_error(runs, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(runs["a"], out)
    cfg = _config(runs["data"], out)
    cfg = replace(cfg, refiner=replace(cfg.refiner, dim=24), refiner_train=replace(cfg.refiner_train, steps=6))
    with pytest.raises(TrainingSetupError, match="another architecture"):
        train(cfg, resume=True, progress=False)


def test_too_few_scenes_for_the_folds_is_a_setup_error(runs, tmp_path):
    cfg = replace(_config(runs["data"], tmp_path / "b"), oof_folds=N_PAIRS)
    with pytest.raises(TrainingSetupError, match="out-of-fold stage 2 needs at least"):
        train(cfg, progress=False)
    assert not (tmp_path / "b" / "_training" / "stage2").exists()


def test_same_seed_gives_identical_models(runs):
    a, b = load_bundle(runs["a"], n_threads=1), load_bundle(runs["b"], n_threads=1)
    x = _probe_features()
    np.testing.assert_array_equal(a.quantile_model.predict(x), b.quantile_model.predict(x))
    assert a.mapping == b.mapping
    assert runs["manifest_a"]["metrics"]["val_stage3_psnr"] == runs["manifest_b"]["metrics"]["val_stage3_psnr"]
    stage2_files = lambda m: {k: v for k, v in m["files"].items() if k.startswith("quantiles")}
    assert stage2_files(runs["manifest_a"]) == stage2_files(runs["manifest_b"])
    assert len(stage2_files(runs["manifest_a"])) == 2 + a.quantile_model.config.bag  # members, PCA, settings
    sa, sb = a.refiner.state_dict(), b.refiner.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert runs["manifest_a"]["model_version"] == runs["manifest_b"]["model_version"]


def test_init_refiner_starts_from_the_given_bundle(runs, tmp_path):
    # with a zero learning rate nothing moves: the result is the source bundle's refiner exactly
    cfg = _config(runs["data"], tmp_path / "tuned", seed=1)
    cfg = replace(cfg, init_refiner=str(runs["a"]), refiner_train=replace(cfg.refiner_train, lr=0.0))
    manifest = train(cfg, progress=False)
    source, tuned = load_bundle(runs["a"]).refiner.state_dict(), load_bundle(tmp_path / "tuned").refiner.state_dict()
    assert all(torch.equal(source[k], tuned[k]) for k in source)
    assert manifest["training"]["refiner_initialized_from"] == runs["manifest_a"]["model_version"]

    wrong = replace(cfg, output=str(tmp_path / "wrong"), refiner=RefinerConfig(dim=8, depth=1, heads=2))
    with pytest.raises(ValueError, match="refiner"):
        train(wrong, progress=False)


def test_the_detail_rule_is_fit_on_the_validation_pairs_refined_as_the_bundle_refines(tmp_path):
    before = torch.get_num_threads()
    data = write_lol(tmp_path / "lol", 14, 96, 112, seed=5)
    cfg = replace(_config(data, tmp_path / "with"), val_fraction=0.65)
    manifest = train(cfg, progress=False)
    off = train(replace(cfg, output=str(tmp_path / "without"), detail=False), progress=False)
    torch.set_num_threads(before)
    record = manifest["metrics"]["detail"]
    assert record["fit"] and record["photos"] == manifest["training"]["validation_pairs"] >= 8
    assert -1.0 <= record["mean_label"] <= 1.0
    assert manifest["detail"]["keep"] == 0.0  # one set, no capture gate: every photo kept in full
    assert load_bundle(tmp_path / "with").detail == DetailRule(**manifest["detail"])
    assert off["detail"] is None and "detail" not in off["metrics"]
    assert load_bundle(tmp_path / "without").detail is None


def test_random_crops_come_from_the_right_places():
    from llie.training.refiner_training import random_crops

    images = [torch.arange(120 * 160 * 3, dtype=torch.float32).reshape(120, 160, 3) + 1e6 * i for i in range(3)]
    x, y = random_crops(images, [im + 0.5 for im in images], batch=6, crop=80, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (6, 3, 80, 80) and x.is_contiguous()
    torch.testing.assert_close(y, x + 0.5)  # input and target crops stay aligned through rotation and flip
    for crop in x:
        source = images[int(crop.min().item() // 1e6)]
        values = set(crop.flatten().tolist())
        assert values <= set(source.flatten().tolist()) and len(values) == 80 * 80 * 3


def test_padded_crops_keep_their_pixels_in_a_random_place_and_mirror_the_rest():
    from llie.training.refiner_training import pad_at_random

    x = torch.rand(16, 3, 160, 160)
    y = x + 1.0
    px, py, mask = pad_at_random(x, y, multiple=80, patch=10, rng=np.random.default_rng(1))
    assert px.shape == x.shape and mask.shape == (16, 1, 160, 160)
    torch.testing.assert_close(py, px + 1.0)  # input and target padded alike
    cuts = set()
    for a, p, m in zip(x, px, mask[:, 0]):
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        top, left, h, w = int(rows[0]), int(cols[0]), len(rows), len(cols)
        assert m.sum().item() == h * w  # one rectangle
        assert (160 - h) % 10 == 0 and 0 <= 160 - h <= 70 and (160 - w) % 10 == 0 and 0 <= 160 - w <= 70
        cuts.add((160 - h, 160 - w))
        torch.testing.assert_close(p[:, top : top + h, left : left + w], a[:, :h, :w])  # the crop's own pixels
        # the rest is mirror padding, edge row included: numpy's "symmetric", as llie.method.refine pads photos
        np.testing.assert_array_equal(
            p.numpy(), np.pad(a[:, :h, :w].numpy(), ((0, 0), (top, 160 - h - top), (left, 160 - w - left)), "symmetric")
        )
    assert len(cuts) > 4  # the strips vary
    # a crop of one window: the strip stays within half of it, so the mirror always has enough to copy
    small = torch.rand(32, 3, 80, 80)
    px, _, mask = pad_at_random(small, small, multiple=80, patch=10, rng=np.random.default_rng(2))
    assert px.shape == small.shape and mask[:, 0].sum((1, 2)).min().item() >= 40 * 40


def test_masked_loss_ignores_what_the_mask_leaves_out():
    from llie.training.refiner_training import refiner_loss

    target = torch.rand(2, 3, 40, 40)
    pred = target + 0.1
    ones = torch.ones(2, 1, 40, 40)
    torch.testing.assert_close(refiner_loss(pred, target, 20.0, ones)[0], refiner_loss(pred, target, 20.0)[0])
    mask = ones.clone()
    mask[:, :, :, 30:] = 0
    spoiled = pred.clone()
    spoiled[:, :, :, 30:] = 5.0  # far off, but outside the mask
    loss, psnr = refiner_loss(spoiled, target, 20.0, mask)
    assert psnr.item() == pytest.approx(20.0, abs=1e-3) and loss.item() == pytest.approx(-20.0 + 2.0, abs=1e-3)


def test_training_with_padded_crops_learns(tmp_path):
    from llie.method.refiner import Refiner
    from llie.training.refiner_training import RefinerRun, train_refiner

    inputs, highs = _noisy_copies(side=160)
    cfg = replace(
        _config(Path("unused"), tmp_path),
        refiner_train=RefinerTrainConfig(
            steps=6, batch=2, crop=160, lr=3e-3, eval_every=6, checkpoint_every=6, pad_augment=True
        ),
    )
    torch.manual_seed(0)
    start = Refiner(cfg.refiner)
    model, state = train_refiner(
        (inputs, highs), (inputs, highs), RefinerRun(cfg, tmp_path, progress=False, init=start)
    )
    assert state["history"] and state["history"][-1]["val_psnr"] > state["history"][0]["val_psnr"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning"
)  # the skipped first step
def test_a_non_finite_batch_is_skipped_not_learned(tmp_path):
    from llie.training.refiner_training import RefinerRun, train_refiner

    rng = np.random.default_rng(0)
    good = rng.random((80, 80, 3), dtype=np.float32)
    broken = good.copy()
    broken[10, 10, 0] = np.nan
    cfg = TrainConfig(
        data="unused",
        output=str(tmp_path),
        device="cpu",
        refiner=RefinerConfig(dim=16, depth=1, heads=2),
        refiner_train=RefinerTrainConfig(steps=8, batch=1, crop=80, warmup=1),
    )
    model, state = train_refiner(([good, broken], [good, good]), ([], []), RefinerRun(cfg, tmp_path, progress=False))
    assert state["step"] == 8
    assert 1 <= state["skipped_steps"] < 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state["devices"] == ["cpu"] and state["seconds"] > 0


def _noisy_copies(n: int = 2, side: int = 80) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(inputs, targets): random images and noisy copies of them, enough for a few refiner steps."""
    rng = np.random.default_rng(0)
    highs = [rng.random((side, side, 3), dtype=np.float32) for _ in range(n)]
    return [np.clip(h + rng.normal(0, 0.05, h.shape), 0, 1).astype(np.float32) for h in highs], highs


def test_a_detail_head_is_added_to_a_headless_bundle_and_trained_alone(runs, tmp_path):
    """--init-refiner from a bundle without a detail head keeps its transformer and adds the head (as the
    identity); --freeze-transformer then trains the head and leaves every transformer weight as it was."""
    from llie.method.bundle import Bundle, save_bundle
    from llie.method.refiner import Refiner
    from llie.training.refiner_training import RefinerRun, initial_refiner, train_refiner

    torch.manual_seed(0)
    headless = Refiner(RefinerConfig(dim=16, depth=1, heads=2, detail_channels=0))
    with torch.no_grad():
        headless.head.weight.normal_(0, 0.05)
    source = load_bundle(runs["a"])
    save_bundle(Bundle(source.quantile_model, source.mapping, headless), tmp_path / "headless")
    cfg = replace(_config(runs["data"], tmp_path / "out"), init_refiner=str(tmp_path / "headless"))
    init, _ = initial_refiner(cfg.init_refiner, cfg.refiner)
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(init(x), load_bundle(tmp_path / "headless").refiner(x))
    assert init.detail is not None

    inputs, highs = _noisy_copies()
    frozen = replace(cfg, refiner_train=replace(cfg.refiner_train, freeze_transformer=True, lr=1e-2))
    model, _ = train_refiner((inputs, highs), ([], []), RefinerRun(frozen, tmp_path, progress=False, init=init))
    before, after = init.state_dict(), model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("detail.") for k in moved), moved

    with pytest.raises(ValueError, match="detail head"):
        train_refiner((inputs, highs), ([], []), RefinerRun(frozen, tmp_path, progress=False, init=None))
    # the whole run refuses it before stage 2 is fitted: nothing is written
    no_init = replace(frozen, init_refiner=None, output=str(tmp_path / "refused"))
    with pytest.raises(ValueError, match="detail head"):
        train(no_init, progress=False)
    assert not (tmp_path / "refused").exists()


def test_ema_weights_are_what_a_run_without_validation_returns(tmp_path):
    """With ema_decay the moving average, not the last step, is kept; the checkpoint holds both."""
    from llie.method.refiner import Refiner
    from llie.training.refiner_training import RefinerRun, train_refiner, update_ema

    a, b = Refiner(RefinerConfig(dim=16, depth=1, heads=2)), Refiner(RefinerConfig(dim=16, depth=1, heads=2))
    expected = {k: v.clone() for k, v in a.state_dict().items()}
    update_ema(a, b, decay=0.9, step=1000)  # past the ramp: a <- 0.9 a + 0.1 b
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * expected[k] + 0.1 * b.state_dict()[k])

    inputs, highs = _noisy_copies()
    cfg = TrainConfig(
        data="unused",
        output=str(tmp_path),
        device="cpu",
        refiner=RefinerConfig(dim=16, depth=1, heads=2),
        refiner_train=RefinerTrainConfig(steps=6, batch=2, crop=80, warmup=1, lr=1e-2, ema_decay=0.5),
    )
    model, _ = train_refiner((inputs, highs), ([], []), RefinerRun(cfg, tmp_path, progress=False))
    ckpt = torch.load(tmp_path / "refiner_checkpoint.pt", weights_only=True)
    returned = model.state_dict()
    assert all(torch.equal(returned[k], ckpt["ema"][k]) for k in returned)
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in returned)


def test_stage2_weights_pairs_by_their_out_of_fold_error(runs):
    """The default run weights each training pair by 1 / its out-of-fold MSE and keeps the weights, so a
    resumed run refits stage 2 the same way."""
    from llie.training.data import find_pairs, load_pairs, split_by_group
    from llie.training.stage2 import inverse_errors

    metrics = runs["manifest_a"]["metrics"]
    assert np.isfinite(metrics["train_oof_stage3_psnr_unweighted"])
    low, high = metrics["pair_weight_range"]
    assert 0 < low <= 1 <= high
    saved = np.load(runs["a"] / "_training" / "stage3_inputs.npz")
    train_pairs, _ = split_by_group(find_pairs(runs["data"]), 0.15, 0)
    assert saved["weights"].shape == (len(train_pairs),) and (saved["weights"] > 0).all()
    assert saved["weights"].min() / saved["weights"].mean() == pytest.approx(low)
    assert load_bundle(runs["a"]).quantile_model.config.error_weighting is True

    # inverse_errors is 1 / MSE of the stage-3 output: the true quantiles beat darkened ones
    from llie.method.quantiles import target_quantiles

    lows, highs = load_pairs(train_pairs[:2])
    true = np.stack([target_quantiles(h) for h in highs])
    weights = inverse_errors(lows, highs, np.stack([true[0], true[1] * 0.5]))
    assert weights[0] > 4 * weights[1]
    from llie.method.mapping import match_to_quantiles
    from llie.metrics import quantize8

    out = quantize8(match_to_quantiles(lows[1], true[1] * 0.5)) / 255.0
    assert weights[1] == pytest.approx(1.0 / np.mean((out - highs[1]) ** 2), rel=1e-6)


def test_a_pairs_rows_do_not_depend_on_the_other_pairs(runs):
    from llie.training.data import find_pairs, load_pairs
    from llie.training.stage2 import pair_rows

    found = find_pairs(runs["data"])[:3]
    lows, highs = load_pairs(found)
    cfg = QuantileModelConfig(augmentations=3)
    together = pair_rows(found, lows, highs, cfg, seed=0, progress=False)
    alone = pair_rows(found[2:], lows[2:], highs[2:], cfg, seed=0, progress=False)
    for a, b in zip(together[2], alone[0]):
        np.testing.assert_array_equal(a, b)
    other_seed = pair_rows(found[2:], lows[2:], highs[2:], cfg, seed=1, progress=False)
    assert not np.array_equal(other_seed[0][0], alone[0][0])


def test_exposure_jitter_is_a_random_gamma_per_crop_with_a_smaller_spread_between_channels():
    from llie.training.refiner_training import jitter_exposure

    x = torch.full((2000, 3, 4, 4), 0.5, dtype=torch.float64)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    out = jitter_exposure(x, 0.2, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(out[:, :, 0, 0] == 0.0) and torch.all(out[:, :, 0, 1] == 1.0)  # black and white stay
    log_gamma = torch.log(torch.log(out[:, :, 1, 1]) / np.log(0.5)).numpy()  # 0.5 ** g -> g
    shared = log_gamma.mean(axis=1)
    assert abs(shared.mean()) < 0.02 and 0.18 < shared.std() < 0.22
    spread = (log_gamma - shared[:, None]).std()
    assert 0.02 < spread < 0.08  # sigma / 4 between channels, so casts stay small
    again = jitter_exposure(x, 0.2, np.random.default_rng(0))
    assert torch.equal(out, again)


def test_each_member_of_a_bag_has_its_own_rows_and_trees(runs):
    from llie.training.data import find_pairs, load_pairs
    from llie.training.stage2 import bag_rows, fit_quantiles, pair_rows

    found = find_pairs(runs["data"])[:6]
    lows, highs = load_pairs(found)
    cfg = QuantileModelConfig(augmentations=3, n_estimators=5, bag=3)
    row_sets = bag_rows(found, lows, highs, cfg, seed=2, progress=False)
    assert len(row_sets) == 3
    for a, b in zip(row_sets[0][0], pair_rows(found, lows, highs, cfg, seed=2, progress=False)[0]):
        np.testing.assert_array_equal(a, b)  # a bag of one is exactly the single model of before
    assert not np.array_equal(row_sets[0][1][0], row_sets[1][1][0])
    model = fit_quantiles(row_sets, cfg, np.linspace(0.5, 2.0, len(found)), threads=1)
    assert model.config.bag == 3 and model.config.seed == cfg.seed
    x = np.stack([r[0][0] for r in row_sets[0]])
    predictions = [m.predict(x) for m in model.members]
    assert all(np.abs(p - predictions[0]).max() > 1e-4 for p in predictions[1:])
    np.testing.assert_allclose(model.predict(x), np.mean(predictions, axis=0), atol=1e-12)


def test_zero_steps_keep_the_initial_refiner_and_retrain_stage2(runs, tmp_path):
    """--steps 0 --init-refiner: the refiner is the given one, scored once on validation; here also
    without error weighting, which then leaves no weights behind."""
    cfg = _config(runs["data"], tmp_path / "restage", seed=1)
    cfg = replace(
        cfg,
        init_refiner=str(runs["a"]),
        refiner_train=replace(cfg.refiner_train, steps=0),
        quantile=replace(cfg.quantile, error_weighting=False),
    )
    manifest = train(cfg, progress=False)
    source, kept = load_bundle(runs["a"]).refiner.state_dict(), load_bundle(tmp_path / "restage").refiner.state_dict()
    assert all(torch.equal(source[k], kept[k]) for k in source)
    history = manifest["metrics"]["refiner_history"]
    assert [h["step"] for h in history] == [0] and history[0]["val_psnr"] == manifest["metrics"]["val_stage4_psnr"]
    assert "pair_weight_range" not in manifest["metrics"]
    assert "weights" not in np.load(tmp_path / "restage" / "_training" / "stage3_inputs.npz").files
    assert load_bundle(tmp_path / "restage").quantile_model.config.error_weighting is False


def test_a_fine_tune_that_only_gets_worse_returns_its_starting_point(tmp_path):
    """With an initial refiner, step 0 is scored and kept as a candidate: here training pulls toward
    inverted targets, validation only drops, and the initial weights come back unchanged."""
    from llie.method.refiner import Refiner
    from llie.training.refiner_training import RefinerRun, train_refiner

    torch.manual_seed(0)
    init = Refiner(RefinerConfig(dim=16, depth=1, heads=2))
    inputs, highs = _noisy_copies()
    cfg = TrainConfig(
        data="unused",
        output=str(tmp_path),
        device="cpu",
        refiner=RefinerConfig(dim=16, depth=1, heads=2),
        refiner_train=RefinerTrainConfig(steps=6, batch=2, crop=80, warmup=1, lr=1e-2, eval_every=3),
    )
    model, state = train_refiner(
        (inputs, [1 - h for h in highs]), (inputs, highs), RefinerRun(cfg, tmp_path, progress=False, init=init)
    )
    steps = [h["step"] for h in state["history"]]
    scores = [h["val_psnr"] for h in state["history"]]
    assert steps == [0, 3, 6] and max(scores[1:]) < scores[0] == state["best_psnr"]
    kept, start = model.state_dict(), init.state_dict()
    assert all(torch.equal(kept[k], start[k]) for k in start)


def test_train_on_a_png_set_and_a_jpeg_set_with_named_scenes(tmp_path):
    """`llie train --data A --data B`: LOL-layout PNGs beside SICE-layout JPEGs with pairs.json, end to end
    through the command line, with the do-no-harm rows, the hue-keeping map and the refine policy."""
    from click.testing import CliRunner
    from helpers_synthetic import to_uint8
    from PIL import Image

    from llie_cli.main import cli

    png = write_lol(tmp_path / "lol", 6, 96, 112, seed=11)
    sice = tmp_path / "sice"
    lows, highs = pairs(6, 96, 112, seed=12)
    entries = []
    for i, (low, high) in enumerate(zip(lows, highs)):
        for side, image in (("low", low), ("high", high)):
            (sice / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(image)).save(sice / side / f"s{i // 2}_{i}.jpg", quality=92)
        entries.append({"name": f"s{i // 2}_{i}.jpg", "scene": i // 2})
    (sice / "pairs.json").write_text(json.dumps({"pairs": entries}))
    out = tmp_path / "bundle"
    before = torch.get_num_threads()
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(png),
            "--data",
            str(sice),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--steps",
            "2",
            "--batch",
            "2",
            "--crop",
            "80",
            "--dim",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--histogram-rows",
            "2",
            "--bag",
            "1",
            "--harmless-rows",
            "2",
            "--refiner-gain",
            "1.2",
            "1.5",
        ],
        catch_exceptions=False,
    )
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["training"]["data"] == ["lol", "sice"]
    assert manifest["training"]["pairs"] == 12 and manifest["training"]["target_groups"] <= 9  # 6 + 3 named scenes
    assert manifest["mapping"]["colour"] == "bounded" and manifest["mapping"]["max_slope"] == 16.0
    assert manifest["mapping"]["slope_anchor"] == "mean"  # the command's default
    assert manifest["policy"] == {
        "exposure_full": 0.22,
        "exposure_off": 0.28,
        "anchor_exposure": True,
        "gain_off": 1.2,
        "gain_full": 1.5,
        "hue_guard": 30.0,  # the command's default
        "black_point_knee": 5.0,  # the command's default
    }
    # each set judged by whether stage 2's out-of-fold brightness beats a constant on it; a gate where they differ
    kinds = manifest["metrics"]["capture_gate"]["scene_exposed_sets"]
    assert set(kinds) == {"lol", "sice"}
    assert (manifest["capture_gate"] is not None) == (len(set(kinds.values())) == 2)
    # per set, stage 2's brightness error against the floor of what no model can know: every SICE-like
    # scene here holds two distinct targets, so all six count towards its floor
    exposure = manifest["metrics"]["exposure"]
    assert set(exposure) == {"lol", "sice"} and exposure["sice"]["floor"]["targets"] == 6
    assert exposure["sice"]["floor"]["sd"] > 0 and exposure["sice"]["error_sd"] > 0
    assert exposure["sice"]["target_sd"] > 0
    correlation = exposure["sice"]["floor"]["within_scene_correlation"]  # None where stage 2 gives a scene one value
    assert correlation is None or -1 <= correlation <= 1
    # each LOL-like pair has its own target: no floor, written as JSON's null rather than NaN
    assert exposure["lol"]["floor"] == {"sd": None, "scenes": 0, "targets": 0, "within_scene_correlation": None}
    bundle = load_bundle(out)
    assert bundle.quantile_model.config.harmless == 2 and bundle.policy.gain_full == 1.5
    assert (bundle.capture_gate is not None) == (manifest["capture_gate"] is not None)
    image = Enhancer(bundle, device="cpu").enhance(lows[0]).image
    assert image.shape == lows[0].shape and image.mean() > lows[0].mean()


def test_train_takes_its_options_from_a_toml_config_and_the_command_line_overrides_it(tmp_path):
    """`llie train --config FILE`: every option from the file, the command line winning, unknown keys refused."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    png = write_lol(tmp_path / "lol", 6, 96, 112, seed=11)
    out = tmp_path / "bundle"
    config = tmp_path / "train.toml"
    config.write_text(
        f"data = [{str(png)!r}]\noutput = {str(out)!r}\n"
        'device = "cpu"\nthreads = 1\nsteps = 2\nbatch = 2\ncrop = 80\ndim = 16\ndepth = 1\nheads = 2\n'
        'histogram-rows = 2\nbag = 1\nharmless-rows = 5\nmax-slope = 8.0\nslope-anchor = "median"\n'
        "error-weighting = false\nrefiner-gain = [1.2, 1.5]\n"
    )
    before = torch.get_num_threads()
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--harmless-rows", "2"], catch_exceptions=False)
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["mapping"]["max_slope"] == 8.0 and manifest["mapping"]["slope_anchor"] == "median"  # from the file
    assert manifest["policy"]["gain_off"] == 1.2 and manifest["policy"]["gain_full"] == 1.5
    bundle = load_bundle(out)
    assert bundle.quantile_model.config.harmless == 2  # the command line over the file's 5
    assert bundle.quantile_model.config.bag == 1

    config.write_text("stepz = 3\n")
    refused = CliRunner().invoke(cli, ["train", "--config", str(config), "--data", str(png), "--output", str(out)])
    assert refused.exit_code == 2 and "unknown key(s) stepz" in refused.output
    config.write_text("steps = \n")
    broken = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert broken.exit_code == 2 and "train.toml" in broken.output
