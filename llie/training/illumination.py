"""Training the illumination net (``llie.method.illumination``) on stage-3 outputs and their targets.

Both are shrunk to the net's grid once, so a step costs milliseconds on a CPU. The loss compares the
relit output with the target brought to the output's mean luma: how bright the whole photo is stays
stage 2's job, the net learns only where the light should fall.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llie.method.illumination import LUMA, IlluminationConfig, IlluminationNet, grid_shape
from llie.method.working_size import area_downscale
from llie.training.config import IlluminationTrainConfig


def grid_pairs(mapped: list[np.ndarray], targets: list[np.ndarray], grid: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each stage-3 output and its target, area-averaged to the net's grid."""
    out = []
    for m, t in zip(mapped, targets):
        height, width = m.shape[:2]
        shape = grid_shape(height, width, grid)
        out.append((area_downscale(m, shape), area_downscale(t, shape)))
    return out


def batches(pairs: list[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator) -> Iterator:
    """Endless (input, target) batches of one image shape each, flipped and transposed at random."""
    by_shape: dict[tuple, list[int]] = {}
    for i, (small, _) in enumerate(pairs):
        by_shape.setdefault(small.shape, []).append(i)
    shapes = list(by_shape)
    while True:
        members = by_shape[shapes[rng.integers(len(shapes))]]
        pick = rng.choice(members, size=min(size, len(members)), replace=False)
        x = torch.from_numpy(np.stack([pairs[i][0] for i in pick])).permute(0, 3, 1, 2)
        y = torch.from_numpy(np.stack([pairs[i][1] for i in pick])).permute(0, 3, 1, 2)
        if rng.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        if rng.random() < 0.5:
            x, y = x.transpose(2, 3), y.transpose(2, 3)
        yield x, y


def illumination_loss(net: IlluminationNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE of the relit ``x`` against ``y`` scaled to ``x``'s mean luma."""
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)
    out = (x * net(x)).clamp(0, 1)
    ratio = (x * weights).sum(1).mean((1, 2)) / ((y * weights).sum(1).mean((1, 2)) + 1e-6)
    return F.mse_loss(out, (y * ratio[:, None, None, None]).clamp(0, 1))


def train_illumination(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    cfg: IlluminationTrainConfig = IlluminationTrainConfig(),
    net_cfg: IlluminationConfig = IlluminationConfig(),
    progress: bool = True,
) -> IlluminationNet:
    """A net trained on ``grid_pairs`` (AdamW, one-cycle learning rate)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = IlluminationNet(net_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    stream = batches(pairs, cfg.batch, rng)
    for _ in tqdm(range(cfg.steps), desc="illumination", disable=not progress, leave=False):
        x, y = next(stream)
        loss = illumination_loss(net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()
