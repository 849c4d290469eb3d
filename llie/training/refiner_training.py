"""Training the refiner (stage 4): random crops, the loss, a weight average, checkpoints to resume from."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llie import atomic
from llie.method.bundle import load_bundle
from llie.method.policy import EnhancePolicy, apply_policy
from llie.method.refine import refine, resolve_device
from llie.method.refiner import Refiner, RefinerConfig
from llie.metrics import quantize8, ssim, ssim_map
from llie.training.config import RefinerTrainConfig, TrainConfig, TrainingSetupError
from llie.training.stage2 import mean_psnr

Images = tuple[list[np.ndarray], list[np.ndarray]]  # (stage-3 inputs, well-exposed targets)


@dataclass(frozen=True)
class RefinerRun:
    """One refiner training session: its settings, where it keeps checkpoints, and where it starts."""

    cfg: TrainConfig
    run_dir: Path
    resume: bool = False  # continue from the checkpoint in run_dir, if there is one
    progress: bool = True
    init: Refiner | None = None  # the weights to start from (fine-tuning); None: fresh ones


def refiner_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    l1_weight: float,
    mask: torch.Tensor | None = None,
    ssim_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-PSNR (per image, dB) + l1_weight * L1 + ssim_weight * (1 - SSIM); returns (loss, mean PSNR).
    ``mask`` (B, 1, H, W) of zeros and ones limits them to the pixels it marks (the photo's own, in a
    padded crop; SSIM to the windows wholly inside them)."""
    err = pred - target
    if mask is None:
        mse, l1 = err.pow(2).flatten(1).mean(1), err.abs().mean()
    else:
        counts = mask.flatten(1).sum(1) * pred.shape[1]
        mse = (err.pow(2) * mask).flatten(1).sum(1) / counts
        l1 = (err.abs() * mask).sum() / counts.sum()
    psnr_db = -10.0 * torch.log10(mse + 1e-8)
    loss = -psnr_db.mean() + l1_weight * l1
    if ssim_weight:
        loss = loss + ssim_weight * (1.0 - mean_ssim(pred, target, mask))
    return loss, psnr_db.mean().detach()


def mean_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of (B, 3, H, W) images in [0, 1] as ``llie.metrics.ssim`` takes it (7x7 uniform windows,
    per channel, sample covariances), over the windows wholly inside ``mask`` when one is given."""
    pool = lambda a: torch.nn.functional.avg_pool2d(a, 7, stride=1)  # noqa: E731
    similarity = ssim_map(pred, target, pool, 7)
    if mask is None:
        return similarity.mean()
    inside = (pool(mask) > 0.999).to(similarity.dtype)
    return (similarity * inside).sum() / (inside.sum() * pred.shape[1]).clamp_min(1.0)


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


def check_crop(cfg: TrainConfig) -> None:
    if cfg.refiner_train.crop % cfg.refiner.multiple:
        raise TrainingSetupError(
            f"crop {cfg.refiner_train.crop} must be a multiple of the refiner's {cfg.refiner.multiple} pixels"
        )


def check_freeze(cfg: TrainConfig, has_init: bool) -> None:
    """freeze_transformer needs a detail head to train and a transformer to start from."""
    if cfg.refiner_train.freeze_transformer and not (cfg.refiner.detail_channels and has_init):
        raise TrainingSetupError(
            "freeze_transformer trains the detail head of a transformer from init_refiner: "
            "give both a detail head and an initial refiner"
        )


def update_ema(ema: Refiner, model: Refiner, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * model; the decay ramps up over the first steps so that the
    average of a fresh run is not dominated by its random initial weights."""
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def _optimizer(model: Refiner, rt: RefinerTrainConfig):
    """AdamW on the trainable weights, with a linear warm-up and a cosine decay over ``rt.steps``."""
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=rt.lr, weight_decay=rt.weight_decay)
    total = max(rt.steps, 1)  # 0 steps: keep the initial refiner, as when only stage 2 is retrained
    schedule = lambda s: min(1.0, (s + 1) / rt.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


class _Session:
    """The refiner, its optimiser and weight average, and the run's state (step, best score, history),
    fresh or restored from the run directory's checkpoint."""

    def __init__(self, run: RefinerRun):
        cfg, rt = run.cfg, run.cfg.refiner_train
        self.run, self.rt = run, rt
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = Refiner(cfg.refiner).to(self.device)
        check_freeze(cfg, run.init is not None)
        if rt.freeze_transformer:
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(name.startswith("detail."))
        self.opt, self.sched = _optimizer(self.model, rt)
        self.ckpt_path, self.best_path = run.run_dir / "refiner_checkpoint.pt", run.run_dir / "refiner_best.pt"
        self.state: dict = {"step": 0, "best_psnr": -1.0, "history": []}
        resuming = run.resume and self.ckpt_path.exists()
        if run.init is not None and not resuming:
            self.model.load_state_dict(run.init.state_dict())
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if rt.ema_decay > 0 else None
        if resuming:
            self._restore()
        self.scored = self.ema if self.ema is not None else self.model  # what validation scores, the best keeps
        self.running: float | None = None  # the training PSNR's moving average
        self.started = time.time()

    def _restore(self) -> None:
        ckpt = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError:  # missing, unexpected or differently sized weights
            raise TrainingSetupError(
                f"{self.ckpt_path} holds a refiner of another architecture than {self.run.cfg.refiner}: "
                "resume with the settings it was started with, or use a new --output"
            ) from None
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.get("ema", ckpt["model"]))
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.state = json.loads(ckpt["state"])

    def tensors(self, images) -> list[torch.Tensor]:
        return [torch.from_numpy(np.asarray(a, np.float32)).to(self.device) for a in images]

    def validate(self, val: Images, bar) -> None:
        vp, vs = evaluate_refiner(self.scored, *val, self.device, self.run.cfg.policy)
        step = self.state["step"]
        self.state["history"].append({"step": step, "val_psnr": vp, "val_ssim": vs, "train_psnr": self.running})
        bar.write(f"step {step}: val PSNR {vp:.2f} dB, SSIM {vs:.3f}")
        if vp > self.state["best_psnr"]:
            self.state["best_psnr"] = vp
            state = self.scored.state_dict()
            atomic.write_file(self.best_path, lambda f: torch.save(state, f))

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> float:
        """One optimiser step on a batch; returns its loss."""
        # full precision on every device: under bf16 autocast training went to NaN (docs/training.md)
        pred = anchored(self.model(x), x, self.run.cfg.policy)
        loss, batch_psnr = refiner_loss(pred, y, self.rt.l1_weight, mask, self.rt.ssim_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if torch.isfinite(grad_norm):
            self.opt.step()
            if self.ema is not None:
                update_ema(self.ema, self.model, self.rt.ema_decay, self.state["step"])
        else:  # one bad batch must not poison the weights (and every later checkpoint) with NaN
            self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + 1
        self.sched.step()
        self.state["step"] += 1
        p = batch_psnr.item()
        self.running = p if self.running is None else 0.95 * self.running + 0.05 * p
        return loss.item()

    def checkpoint(self) -> None:
        self.state["seconds"] += time.time() - self.started  # training time summed over resumed sessions
        self.started = time.time()
        saved = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "state": json.dumps(self.state),
        }
        if self.ema is not None:
            saved["ema"] = self.ema.state_dict()
        atomic.write_file(self.ckpt_path, lambda f: torch.save(saved, f))

    def result(self) -> Refiner:
        """The best validated weights; without validation, the average (or the last weights)."""
        if self.best_path.exists():
            self.model.load_state_dict(torch.load(self.best_path, map_location=self.device, weights_only=True))
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict())
        return self.model.cpu().eval()


def _batch(session: _Session, train_x, train_y, rng: np.random.Generator):
    """(inputs, targets, mask or None) of one training batch, augmented as the settings say."""
    rt, cfg = session.rt, session.run.cfg
    x, y = random_crops(train_x, train_y, rt.batch, rt.crop, rng)
    if rt.exposure_jitter > 0:
        x = jitter_exposure(x, rt.exposure_jitter, rng)
    if rt.pad_augment:
        return pad_at_random(x, y, cfg.refiner.multiple, cfg.refiner.patch, rng)
    return x, y, None


def train_refiner(train: Images, val: Images, run: RefinerRun) -> tuple[Refiner, dict]:
    """The refiner trained on ``train``, the weights that scored best on ``val`` kept; and the run's state."""
    rt = run.cfg.refiner_train
    check_crop(run.cfg)
    session = _Session(run)
    state = session.state
    rng = np.random.default_rng(run.cfg.seed + state["step"])  # a resumed run draws fresh crops, reproducibly
    train_x, train_y = session.tensors(train[0]), session.tensors(train[1])
    state.setdefault("seconds", 0.0)
    state.setdefault("devices", [])
    session.started = time.time()
    bar = tqdm(total=rt.steps, initial=state["step"], desc="refiner", disable=not run.progress)
    # a fine-tune starts as a candidate too: it can then only keep or improve its starting point on validation
    if val[0] and not state["history"] and (run.init is not None or rt.steps == 0):
        session.validate(val, bar)
    while state["step"] < rt.steps:
        if session.device.type not in state["devices"]:  # only devices that trained steps, not an empty resume
            state["devices"].append(session.device.type)
        loss = session.step(*_batch(session, train_x, train_y, rng))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", psnr=f"{session.running:.2f}")
        last = state["step"] == rt.steps
        if val[0] and (state["step"] % rt.eval_every == 0 or last):
            session.validate(val, bar)
        if state["step"] % rt.checkpoint_every == 0 or last:
            session.checkpoint()
    bar.close()
    return session.result(), state
