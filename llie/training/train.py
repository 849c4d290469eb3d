"""Training both learned stages, resumable, and writing a model bundle.

1. Split the pairs into train/validation by scene (llie.training.data.group_scenes), never one scene on both sides.
2. Stage 2: fit the quantile model (a bag of members, each on its own augmented histogram rows of the
   training pairs), each pair weighted by the inverse of its out-of-fold error (llie.method.quantiles explains
   why); choose the KDE bandwidth on validation (and record what plain interpolation would score).
3. Refiner inputs are stage-3 outputs made with *out-of-fold* quantile predictions, so the refiner
   learns to fix the errors stage 2 really makes on unseen images, not the smaller ones it makes on
   images it was fitted on.
4. Stage 4: train the refiner on random crops with loss -PSNR + w * L1; checkpoints every few hundred
   steps (``--resume`` continues), the weights with the best validation PSNR are kept.
5. Refit stage 2 on all pairs, write the bundle with a manifest of data, settings and metrics.
"""

from __future__ import annotations

import copy
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llie.method.bundle import Bundle, BundleError, load_bundle, save_bundle
from llie.method.features import extract_features
from llie.method.mapping import MappingConfig, match_to_quantiles
from llie.method.policy import EnhancePolicy, apply_policy
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows, harmless_rows, target_quantiles
from llie.method.refine import refine, resolve_device
from llie.method.refiner import Refiner, RefinerConfig
from llie.metrics import psnr, quantize8, ssim
from llie.training.data import Pair, group_folds, load_pairs, resolve_training_sets, split_by_group

BANDWIDTHS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08)


@dataclass
class RefinerTrainConfig:
    steps: int = 3000
    batch: int = 16
    crop: int = 160  # multiple of the refiner's 80-pixel window
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup: int = 100
    l1_weight: float = 20.0  # L1 is in [0, 1] units; this puts 0.05 of L1 on a par with 1 dB
    eval_every: int = 250
    checkpoint_every: int = 250
    # validation scores (and keeps) an exponential moving average of the weights when > 0: single
    # steps move the refiner's exposure guess by tenths of a dB, and the average smooths that out
    ema_decay: float = 0.0
    # train the detail head alone on a transformer taken from --init-refiner: fine-tuning the whole
    # refiner on a few hundred pairs lets the transformer over-fit exposure while the head improves
    freeze_transformer: bool = False
    # crops lose a strip along two sides (up to one window less a patch) that mirror padding refills, in
    # random places, with the loss on the crop's own pixels only: inference pads every photo whose sides
    # are not a multiple of the window, and a refiner that never saw padding moved its results by 0.4 dB
    # when a photo sat 40 px further right in its padded canvas (README, Orientation)
    pad_augment: bool = False
    # each input crop is raised to a random gamma exp(N(0, sigma)), with a quarter of that spread between
    # channels: stage 3 leaves each training pair one exposure error (log-gamma spread 0.25 out of fold
    # on our485), so without it the refiner sees every scene mis-exposed in just one way
    exposure_jitter: float = 0.0


@dataclass
class TrainConfig:
    data: str | tuple[str, ...]  # one paired set or several (llie.training.data.resolve_training_sets)
    output: str
    seed: int = 0
    val_fraction: float = 0.15
    oof_folds: int = 4
    device: str = "auto"
    threads: int | None = None
    quantile: QuantileModelConfig = field(default_factory=QuantileModelConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    refiner_train: RefinerTrainConfig = field(default_factory=RefinerTrainConfig)
    bandwidths: tuple[float, ...] = BANDWIDTHS
    # stage 3's colour handling and slope bounds; the KDE bandwidth is chosen on validation
    mapping: MappingConfig = field(default_factory=MappingConfig)
    policy: EnhancePolicy = field(default_factory=EnhancePolicy)
    refit_all: bool = True  # final stage 2 sees every pair once settings are chosen
    max_pairs: int | None = None  # for quick runs and tests
    init_refiner: str | None = None  # bundle whose refiner weights start stage 4 (fine-tuning)


def pair_rows(pairs: list[Pair], lows, highs, cfg: QuantileModelConfig, seed: int, progress: bool):
    """Augmented (features, targets) rows of each pair, drawn once: every stage-2 fit of a run (folds,
    final model, refit) reuses them. Each pair draws from its own stream, keyed by its name, so its rows do
    not depend on which other pairs share the set."""
    rows = []
    for pair, low, high in tqdm(
        list(zip(pairs, lows, highs)), desc="histogram rows", disable=not progress, leave=False
    ):
        rng = np.random.default_rng([seed, zlib.crc32(pair.name.encode())])
        feats, targets = augmented_rows(low, high, rng, cfg.augmentations)
        if cfg.harmless:
            more = harmless_rows(high, rng, cfg.harmless)
            feats, targets = np.concatenate([feats, more[0]]), np.concatenate([targets, more[1]])
        rows.append((feats, targets))
    return rows


def bag_rows(pairs: list[Pair], lows, highs, cfg: QuantileModelConfig, seed: int, progress: bool):
    """Rows for each member of a stage-2 bag: member k draws its own, from seed + 1000 k, so a bag of one
    has exactly the rows a single model had."""
    return [pair_rows(pairs, lows, highs, cfg, seed + 1000 * k, progress) for k in range(cfg.bag)]


def fit_quantiles(row_sets, cfg: QuantileModelConfig, weights: np.ndarray | None, threads: int | None) -> QuantileModel:
    """Stage 2 on the rows of several pairs, one member per set of rows (``bag_rows``); ``weights`` (one
    per pair) are scaled to mean 1 over the rows, so min_child_weight keeps its meaning."""
    members = []
    for k, rows in enumerate(row_sets):
        x, y = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        w = None
        if weights is not None:
            w = np.concatenate([np.full(len(r[0]), wi) for r, wi in zip(rows, weights)])
            w = w / w.mean()
        members.append(QuantileModel.fit(x, y, cfg.member(k), n_threads=threads, sample_weight=w))
    return QuantileModel.combine(members, cfg)


def full_image_features(rows) -> np.ndarray:
    return np.stack([r[0][0] for r in rows])  # augmented_rows puts the whole, unjittered image first


def inverse_errors(lows, highs, quantiles, mapping: MappingConfig = MappingConfig()) -> np.ndarray:
    """1 / MSE of each pair's stage-3 output: the weight that makes a squared-error fit take one
    Gauss-Newton step on the sum of log errors, i.e. on the mean PSNR."""
    mse = [
        np.mean((quantize8(match_to_quantiles(l, q, mapping)) / 255.0 - h) ** 2)
        for l, h, q in zip(lows, highs, quantiles)
    ]
    return 1.0 / np.maximum(np.array(mse), 1e-6)


def mean_psnr(outputs, highs) -> float:
    return float(np.mean([psnr(quantize8(o) / 255.0, h) for o, h in zip(outputs, highs)]))


def tune_mapping(
    lows, highs, quantiles, bandwidths, base: MappingConfig = MappingConfig()
) -> tuple[MappingConfig, dict[str, float]]:
    """Best KDE bandwidth on validation, other settings as in ``base``; the scores of every candidate and
    of plain interpolation."""
    interp = replace(base, method="interp")
    scores = {"interp": mean_psnr([match_to_quantiles(l, q, interp) for l, q in zip(lows, quantiles)], highs)}
    for bw in bandwidths:
        cfg = replace(base, method="kde", bandwidth=bw)
        scores[f"kde_{bw:g}"] = mean_psnr([match_to_quantiles(l, q, cfg) for l, q in zip(lows, quantiles)], highs)
    best = max(bandwidths, key=lambda bw: scores[f"kde_{bw:g}"])
    return replace(base, method="kde", bandwidth=best), scores


def out_of_fold_quantiles(
    pairs: list[Pair], row_sets, cfg: TrainConfig, weights: np.ndarray | None, progress: bool
) -> np.ndarray:
    """Each pair's stage-2 prediction from a model (a bag of ``len(row_sets)``) fit without its scene."""
    folds = group_folds(pairs, cfg.oof_folds, cfg.seed)
    out = np.zeros((len(pairs), 3, 21))
    for k in tqdm(range(cfg.oof_folds), desc="out-of-fold stage 2", disable=not progress, leave=False):
        fit_idx, held = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        w = None if weights is None else weights[fit_idx]
        model = fit_quantiles([[rows[i] for i in fit_idx] for rows in row_sets], cfg.quantile, w, cfg.threads)
        out[held] = model.predict(full_image_features([row_sets[0][i] for i in held]))
    return out


def fit_stage2(pairs: list[Pair], lows, highs, row_sets, cfg: TrainConfig, progress: bool):
    """(model, out-of-fold quantiles, pair weights, metrics) of stage 2 on the training split.

    With error weighting the out-of-fold fits run twice: unweighted, with the bag's first member alone, to
    measure each pair's error, then weighted and bagged, so the refiner trains on the errors of models fit
    the way the final one is."""
    first_pass = row_sets[:1] if cfg.quantile.error_weighting else row_sets
    oof = out_of_fold_quantiles(pairs, first_pass, cfg, None, progress)
    metrics, weights = {}, None
    if cfg.quantile.error_weighting:
        weights = inverse_errors(lows, highs, oof)
        metrics["train_oof_stage3_psnr_unweighted"] = float(np.mean(10 * np.log10(weights)))  # 1 / MSE -> dB
        metrics["pair_weight_range"] = [float(weights.min() / weights.mean()), float(weights.max() / weights.mean())]
        oof = out_of_fold_quantiles(pairs, row_sets, cfg, weights, progress)
    return fit_quantiles(row_sets, cfg.quantile, weights, cfg.threads), oof, weights, metrics


def refiner_loss(
    pred: torch.Tensor, target: torch.Tensor, l1_weight: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """-PSNR (per image, dB) + l1_weight * L1; returns (loss, mean PSNR). ``mask`` (B, 1, H, W) of
    zeros and ones limits both to the pixels it marks (the photo's own, in a padded crop)."""
    err = pred - target
    if mask is None:
        mse, l1 = err.pow(2).flatten(1).mean(1), err.abs().mean()
    else:
        counts = mask.flatten(1).sum(1) * pred.shape[1]
        mse = (err.pow(2) * mask).flatten(1).sum(1) / counts
        l1 = (err.abs() * mask).sum() / counts.sum()
    psnr_db = -10.0 * torch.log10(mse + 1e-8)
    return -psnr_db.mean() + l1_weight * l1, psnr_db.mean().detach()


def random_crops(inputs, targets, batch: int, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random crops with random rotation and flip, from (H, W, 3) float tensors; the crops
    stay on the tensors' device, so on a GPU the images are uploaded once, not every step."""
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(len(inputs))
        h, w = inputs[i].shape[:2]
        y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        x = inputs[i][y0 : y0 + crop, x0 : x0 + crop]
        y = targets[i][y0 : y0 + crop, x0 : x0 + crop]
        k, flip = int(rng.integers(4)), rng.integers(2)
        x, y = torch.rot90(x, k, (0, 1)), torch.rot90(y, k, (0, 1))
        if flip:
            x, y = x.flip(1), y.flip(1)
        xs.append(x)
        ys.append(y)
    to_batch = lambda a: torch.stack(a).permute(0, 3, 1, 2).contiguous()
    return to_batch(xs), to_batch(ys)


def jitter_exposure(x: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> x ** gamma, gamma drawn per crop and channel around one log-normal draw:
    a tone-curve error like stage 3's, which keeps black and white where they are."""
    shared = rng.normal(0.0, sigma, size=(len(x), 1))
    log_gamma = shared + rng.normal(0.0, sigma / 4, size=(len(x), 3))
    gamma = torch.from_numpy(np.exp(log_gamma)).to(x)[:, :, None, None]
    return x.clamp_min(0.0).pow(gamma)


def _mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """(C, H, W) padded like numpy's "symmetric" mode, as ``llie.method.refine`` pads photos."""
    x = torch.cat([x[:, :top].flip(1), x, x[:, x.shape[1] - bottom :].flip(1)], 1)
    return torch.cat([x[:, :, :left].flip(2), x, x[:, :, x.shape[2] - right :].flip(2)], 2)


def pad_at_random(x: torch.Tensor, y: torch.Tensor, multiple: int, patch: int, rng: np.random.Generator):
    """Crops (B, 3, S, S) -> the same size with a strip of 0 to ``multiple - patch`` pixels (whole patches,
    at most S/2, so the padding never outgrows what it mirrors) cut from each crop's bottom and right, the
    rest moved to a random place and mirror-padded back to S, and the (B, 1, S, S) mask of its own pixels."""
    xs, ys, masks = [], [], []
    size = x.shape[-1]
    choices = min(multiple // patch, size // (2 * patch) + 1)
    for a, b in zip(x, y):
        cut_h, cut_w = (int(rng.integers(choices)) * patch for _ in range(2))
        top, left = int(rng.integers(cut_h + 1)), int(rng.integers(cut_w + 1))
        sides = (top, cut_h - top, left, cut_w - left)
        xs.append(_mirror_pad(a[:, : size - cut_h, : size - cut_w], *sides))
        ys.append(_mirror_pad(b[:, : size - cut_h, : size - cut_w], *sides))
        mask = torch.zeros((1, size, size), dtype=x.dtype, device=x.device)
        mask[:, top : top + size - cut_h, left : left + size - cut_w] = 1.0
        masks.append(mask)
    return torch.stack(xs), torch.stack(ys), torch.stack(masks)


def anchored(pred: torch.Tensor, x: torch.Tensor, policy: EnhancePolicy) -> torch.Tensor:
    """(B, 3, H, W) refiner output shifted to its input's channel means when the policy anchors exposure:
    the loss then trains what inference keeps (llie.method.policy)."""
    if not policy.anchor_exposure:
        return pred
    return pred - pred.mean(dim=(2, 3), keepdim=True) + x.mean(dim=(2, 3), keepdim=True)


def evaluate_refiner(
    model: Refiner, inputs, highs, device, policy: EnhancePolicy = EnhancePolicy()
) -> tuple[float, float]:
    """Validation PSNR and SSIM of the refiner on stage-3 ``inputs`` (which all count as brightened: they
    are dark shots), anchored as the policy says."""
    model.eval()
    outs = [apply_policy(x, refine(model, x, device), 1.0, policy) for x in inputs]
    model.train()
    p = mean_psnr(outs, highs)
    s = float(np.mean([ssim(quantize8(o) / 255.0, h) for o, h in zip(outs, highs)]))
    return p, s


class TrainingSetupError(ValueError):
    """A setting, data set or run directory that training cannot work with, found before (or instead of)
    doing the work: the command line shows its message without a traceback."""


def check_cached_split(saved, train_pairs: list[Pair], val_pairs: list[Pair], run_dir: Path) -> None:
    """--resume reuses stage 2's predictions pair by pair: they must belong to the same pairs in the same
    order, or every refiner input would be matched with another photo's prediction."""
    if "train_names" not in saved.files:  # run directories from before the names were kept
        return
    same = list(saved["train_names"]) == [p.name for p in train_pairs] and list(saved["val_names"]) == [
        p.name for p in val_pairs
    ]
    if not same:
        raise TrainingSetupError(
            f"{run_dir} holds stage 2 of another training split (different --data, --seed or "
            "--max-pairs): resume with the settings it was started with, or use a new --output"
        )


def check_crop(cfg: TrainConfig) -> None:
    if cfg.refiner_train.crop % cfg.refiner.multiple:
        raise TrainingSetupError(
            f"crop {cfg.refiner_train.crop} must be a multiple of the refiner's {cfg.refiner.multiple} pixels"
        )


def check_setup(cfg: TrainConfig, train_pairs: list[Pair], train_lows) -> None:
    """Settings that would otherwise fail only after stage 2 has been fit, minutes in."""
    rt = cfg.refiner_train
    check_crop(cfg)
    scenes = len({p.group for p in train_pairs})
    if scenes < cfg.oof_folds:
        raise TrainingSetupError(
            f"the training split holds {scenes} scene(s); out-of-fold stage 2 needs at least "
            f"{cfg.oof_folds} (pairs whose targets match or look alike count as one scene)"
        )
    if rt.steps > 0 and train_lows:
        side = min(min(low.shape[:2]) for low in train_lows)
        if side < rt.crop:
            raise TrainingSetupError(
                f"refiner crops of {rt.crop} px do not fit the smallest training image ({side} px "
                f"on its short side): choose a smaller crop, a multiple of {cfg.refiner.multiple}"
            )


def initial_refiner(bundle_path: str, config: RefinerConfig) -> tuple[Refiner, str]:
    """(refiner, model_version) of an existing bundle, to fine-tune, as a refiner of ``config``.

    The bundle's architecture must be ``config``, or the same transformer without a detail head: then
    the transformer's weights are kept and the configured head is added, starting as the identity."""
    source = load_bundle(bundle_path)
    if source.refiner is None:
        raise TrainingSetupError(f"{bundle_path} has no refiner to start from")
    found = source.refiner.cfg
    headless = replace(config, detail_channels=0, detail_layers=found.detail_layers)
    if found != config and found != headless:
        raise TrainingSetupError(f"{bundle_path} has refiner {found}, not the configured {config}")
    refiner = Refiner(config)
    missing, unexpected = refiner.load_state_dict(source.refiner.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("detail.") for k in missing), (missing, unexpected)
    return refiner, source.model_version


def check_freeze(cfg: TrainConfig, has_init: bool) -> None:
    """freeze_transformer needs a detail head to train and a transformer to start from."""
    if cfg.refiner_train.freeze_transformer and not (cfg.refiner.detail_channels and has_init):
        raise TrainingSetupError(
            "freeze_transformer trains the detail head of a transformer from init_refiner: "
            "give both a detail head and an initial refiner"
        )


def _save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary file: a crash mid-write never leaves a corrupt checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    tmp.replace(path)


def update_ema(ema: Refiner, model: Refiner, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * model; the decay ramps up over the first steps so that the
    average of a fresh run is not dominated by its random initial weights."""
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_refiner(
    train_inputs,
    train_highs,
    val_inputs,
    val_highs,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    init: Refiner | None = None,
) -> tuple[Refiner, dict]:
    rt = cfg.refiner_train
    check_crop(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = Refiner(cfg.refiner).to(device)
    check_freeze(cfg, init is not None)
    if rt.freeze_transformer:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("detail."))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=rt.lr, weight_decay=rt.weight_decay)
    total = max(rt.steps, 1)  # 0 steps: keep the initial refiner, as when only stage 2 is retrained
    schedule = lambda s: min(1.0, (s + 1) / rt.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ckpt_path, best_path = run_dir / "refiner_checkpoint.pt", run_dir / "refiner_best.pt"
    state = {"step": 0, "best_psnr": -1.0, "history": []}
    if init is not None and not (resume and ckpt_path.exists()):
        model.load_state_dict(init.state_dict())
    ema = copy.deepcopy(model).requires_grad_(False) if rt.ema_decay > 0 else None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError:  # missing, unexpected or differently sized weights
            raise TrainingSetupError(
                f"{ckpt_path} holds a refiner of another architecture than {cfg.refiner}: "
                "resume with the settings it was started with, or use a new --output"
            ) from None
        if ema is not None:
            ema.load_state_dict(ckpt.get("ema", ckpt["model"]))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = json.loads(ckpt["state"])
    scored = ema if ema is not None else model  # what validation scores and the best checkpoint keeps
    rng = np.random.default_rng(cfg.seed + state["step"])  # a resumed run draws fresh crops, reproducibly
    as_tensors = lambda images: [torch.from_numpy(np.asarray(a, np.float32)).to(device) for a in images]
    train_x, train_y = as_tensors(train_inputs), as_tensors(train_highs)
    state.setdefault("seconds", 0.0)
    state.setdefault("devices", [])
    started = time.time()
    bar = tqdm(total=rt.steps, initial=state["step"], desc="refiner", disable=not progress)
    running = None

    def validate() -> None:
        vp, vs = evaluate_refiner(scored, val_inputs, val_highs, device, cfg.policy)
        state["history"].append({"step": state["step"], "val_psnr": vp, "val_ssim": vs, "train_psnr": running})
        bar.write(f"step {state['step']}: val PSNR {vp:.2f} dB, SSIM {vs:.3f}")
        if vp > state["best_psnr"]:
            state["best_psnr"] = vp
            _save_atomic(scored.state_dict(), best_path)

    # a fine-tune starts as a candidate too: it can then only keep or improve its starting point on validation
    if val_inputs and not state["history"] and (init is not None or rt.steps == 0):
        validate()
    while state["step"] < rt.steps:
        if device.type not in state["devices"]:  # only devices that trained steps, not a resume that had none left
            state["devices"].append(device.type)
        x, y = random_crops(train_x, train_y, rt.batch, rt.crop, rng)
        if rt.exposure_jitter > 0:
            x = jitter_exposure(x, rt.exposure_jitter, rng)
        mask = None
        if rt.pad_augment:
            x, y, mask = pad_at_random(x, y, cfg.refiner.multiple, cfg.refiner.patch, rng)
        # full precision on every device: our first GPU runs, under bf16 autocast, all went to NaN within
        # 3000 steps; in fp32 the same runs finished without one skipped step
        loss, batch_psnr = refiner_loss(anchored(model(x), x, cfg.policy), y, rt.l1_weight, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(grad_norm):
            opt.step()
            if ema is not None:
                update_ema(ema, model, rt.ema_decay, state["step"])
        else:  # one bad batch must not poison the weights (and every later checkpoint) with NaN
            state["skipped_steps"] = state.get("skipped_steps", 0) + 1
        sched.step()
        state["step"] += 1
        running = batch_psnr.item() if running is None else 0.95 * running + 0.05 * batch_psnr.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", psnr=f"{running:.2f}")
        last = state["step"] == rt.steps
        if val_inputs and (state["step"] % rt.eval_every == 0 or last):
            validate()
        if state["step"] % rt.checkpoint_every == 0 or last:
            state["seconds"] += time.time() - started  # training time summed over resumed sessions
            started = time.time()
            saved = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "state": json.dumps(state),
            }
            if ema is not None:
                saved["ema"] = ema.state_dict()
            _save_atomic(saved, ckpt_path)
    bar.close()
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    elif ema is not None:  # no validation: the average is the result
        model.load_state_dict(ema.state_dict())
    return model.cpu().eval(), state


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train both stages on ``cfg.data`` and write the bundle to ``cfg.output``; returns the manifest."""
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # checked before any work: a wrong starting bundle or setting should not cost a stage-2 fit to find out
    try:
        init, init_version = initial_refiner(cfg.init_refiner, cfg.refiner) if cfg.init_refiner else (None, None)
    except BundleError as exc:
        raise TrainingSetupError(str(exc)) from None
    check_freeze(cfg, init is not None)
    out = Path(cfg.output)
    run_dir = out / "_training"
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs, eval_pairs = resolve_training_sets(cfg.data)
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    train_pairs, val_pairs = split_by_group(pairs, cfg.val_fraction, cfg.seed)
    lows, highs = load_pairs(train_pairs)
    val_lows, val_highs = load_pairs(val_pairs)
    check_setup(cfg, train_pairs, lows)

    # Stage 2 on the training split, bandwidth chosen on validation. Its results are cached for --resume;
    # the metrics file is written last and stands for the whole set, so a crash mid-write refits instead.
    stage2_dir, cache, done = run_dir / "stage2", run_dir / "stage3_inputs.npz", run_dir / "stage2_metrics.json"
    metrics: dict = {}
    if resume and (stage2_dir / "quantiles.json").exists() and cache.exists() and done.exists():
        model = QuantileModel.load(stage2_dir, n_threads=cfg.threads)
        saved = np.load(cache, allow_pickle=False)
        check_cached_split(saved, train_pairs, val_pairs, run_dir)
        oof, val_q = saved["oof"], saved["val"]
        weights = saved["weights"] if "weights" in saved.files else None
        metrics = json.loads(done.read_text())
        mapping = MappingConfig(**metrics["mapping"])
        row_sets = None
    else:
        done.unlink(missing_ok=True)  # until the new stage 2 is complete, nothing here is to be resumed
        row_sets = bag_rows(train_pairs, lows, highs, cfg.quantile, cfg.seed, progress)
        model, oof, weights, metrics = fit_stage2(train_pairs, lows, highs, row_sets, cfg, progress)
        val_q = model.predict(np.stack([extract_features(l) for l in val_lows])) if val_pairs else np.zeros((0, 3, 21))
        if val_pairs:
            mapping, scores = tune_mapping(val_lows, val_highs, val_q, cfg.bandwidths, cfg.mapping)
            oracle = [match_to_quantiles(l, target_quantiles(h), mapping) for l, h in zip(val_lows, val_highs)]
            metrics.update(
                {"val_stage3_psnr_by_mapping": scores, "val_oracle_quantiles_psnr": mean_psnr(oracle, val_highs)}
            )
        else:
            mapping = cfg.mapping
        metrics["mapping"] = asdict(mapping)
        model.save(stage2_dir)
        names = {
            "train_names": np.array([p.name for p in train_pairs]),
            "val_names": np.array([p.name for p in val_pairs]),
        }
        _write_atomic(
            cache,
            lambda f: np.savez(f, oof=oof, val=val_q, **names, **({} if weights is None else {"weights": weights})),
        )
        _write_atomic(done, lambda f: f.write(json.dumps(metrics, indent=2).encode()))

    train_inputs = [match_to_quantiles(l, q, mapping) for l, q in zip(lows, oof)]
    val_inputs = [match_to_quantiles(l, q, mapping) for l, q in zip(val_lows, val_q)]
    metrics["train_oof_stage3_psnr"] = mean_psnr(train_inputs, highs)
    if val_pairs:
        metrics["val_stage3_psnr"] = mean_psnr(val_inputs, val_highs)
    stage2_seconds = time.time() - started

    t = time.time()
    refiner, state = train_refiner(train_inputs, highs, val_inputs, val_highs, cfg, run_dir, resume, progress, init)
    refiner_wall = time.time() - t
    metrics["refiner_history"] = state["history"]
    if val_pairs:
        metrics["val_stage4_psnr"] = state["best_psnr"]

    if cfg.refit_all and val_pairs:
        if row_sets is None:  # resumed: the rows are drawn again, identically
            row_sets = bag_rows(train_pairs, lows, highs, cfg.quantile, cfg.seed, progress)
        val_sets = bag_rows(val_pairs, val_lows, val_highs, cfg.quantile, cfg.seed, progress)
        row_sets = [rows + val_rows for rows, val_rows in zip(row_sets, val_sets)]
        all_weights = None
        if cfg.quantile.error_weighting:
            if weights is None:  # a run directory from before error weighting: its out-of-fold errors serve
                weights = inverse_errors(lows, highs, oof)
            # the validation pairs' errors come from the train-split model, which never saw them
            all_weights = np.concatenate([weights, inverse_errors(val_lows, val_highs, val_q)])
        model = fit_quantiles(row_sets, cfg.quantile, all_weights, cfg.threads)
    bundle = Bundle(model, mapping, refiner, policy=cfg.policy)
    extra = {
        "training": {
            "data": [Path(d).name for d in ([cfg.data] if isinstance(cfg.data, str) else cfg.data)],
            "pairs": len(pairs),
            "target_groups": len({p.group for p in pairs}),  # scenes: see data.group_scenes
            "validation_pairs": len(val_pairs),
            "stage2_refit_on_all_pairs": bool(cfg.refit_all and val_pairs),
            "refiner_initialized_from": init_version,
            "seed": cfg.seed,
            "device": str(resolve_device(cfg.device)),
            "refiner_trained_on": state["devices"],  # every device a resumed run trained on
            # refiner (and so total) count its training time over every resumed session, not only this one
            "seconds": {
                "stage2": round(stage2_seconds, 1),
                "refiner": round(state["seconds"], 1),
                "total": round(time.time() - started - refiner_wall + state["seconds"], 1),
            },
            "config": json.loads(json.dumps(asdict(cfg), default=str)),
        },
        "metrics": metrics,
    }
    manifest = save_bundle(bundle, out, extra)
    if eval_pairs:
        from llie.training.evaluate import evaluate_pairs

        report = evaluate_pairs(out, eval_pairs, progress=progress)
        manifest = save_bundle(bundle, out, {**extra, "eval": {"set": "eval15", **report["mean"]}})
    return manifest
