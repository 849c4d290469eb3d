"""Stage 4: a small vision transformer on 10x10 patches that removes the noise and colour casts left
after histogram mapping.

Windowed attention, an optional whole-image context and a full-resolution detail head; an untrained
refiner returns its input unchanged (docs/method.md, "Inside each stage").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RefinerConfig:
    patch: int = 10  # pixels per token side
    dim: int = 96
    depth: int = 4
    heads: int = 4
    window: int = 8  # tokens per attention-window side
    mlp_ratio: float = 2.0
    # whole-image summary added to every token (see the module docstring); bundles written before this
    # option existed have no such weights and load with it off (llie.method.bundle)
    global_context: bool = True
    # width of the full-resolution convolutions after the patch head (0: none); bundles written before
    # this option existed have none and load with 0 (llie.method.bundle)
    detail_channels: int = 24
    detail_layers: int = 4

    def __post_init__(self) -> None:
        if min(self.patch, self.dim, self.depth, self.heads, self.window) < 1 or self.detail_channels < 0:
            raise ValueError(f"refiner sizes must be positive: {self}")
        if self.dim % self.heads:
            raise ValueError(f"the refiner's width {self.dim} must divide by its {self.heads} attention heads")

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this many pixels."""
        return self.patch * self.window


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C) token grid
        b, h, w, c = x.shape
        s = self.window
        windows = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        q, k, v = self.qkv(windows).view(-1, s * s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, s * s, c)
        out = self.proj(out).view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h, w, c)


class Block(nn.Module):
    def __init__(self, cfg: RefinerConfig):
        super().__init__()
        self.position = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1, groups=cfg.dim)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = WindowAttention(cfg.dim, cfg.heads, cfg.window)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = x + self.position(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalContext(nn.Module):
    """Mean token of the image -> one vector added to every token; starts at zero (no effect)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, C)
        return self.mlp(tokens.mean(dim=(1, 2)))


class DetailHead(nn.Module):
    """3x3 convolutions over (input, transformer output) at full resolution -> pixel-level correction."""

    def __init__(self, channels: int, layers: int):
        super().__init__()
        convs = [nn.Conv2d(6, channels, 3, padding=1)]
        for _ in range(layers - 2):
            convs += [nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1)]
        convs += [nn.GELU(), nn.Conv2d(channels, 3, 3, padding=1)]
        self.net = nn.Sequential(*convs)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # outside training one image at a time: full-resolution activations of a batch of large tiles
        # would dominate peak memory on big photos, and the convolutions gain little from batching
        chunk = len(x) if torch.is_grad_enabled() else 1
        # channels-last runs these narrow convolutions about twice as fast on CPU (oneDNN)
        features = lambda a, b: (torch.cat([a, b], 1) - 0.5).contiguous(memory_format=torch.channels_last)
        return y + torch.cat([self.net(features(a, b)) for a, b in zip(x.split(chunk), y.split(chunk))])


class Refiner(nn.Module):
    def __init__(self, cfg: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.cfg = cfg
        p = cfg.patch
        self.embed = nn.Conv2d(3, cfg.dim, kernel_size=p, stride=p)  # a linear map of each 10x10x3 patch
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.context = GlobalContext(cfg.dim) if cfg.global_context else None
        self.context_at = cfg.depth // 2
        self.head = nn.Linear(cfg.dim, p * p * 3)
        self.skip = nn.Conv2d(3, 3, 3, padding=1)
        self.detail = DetailHead(cfg.detail_channels, cfg.detail_layers) if cfg.detail_channels else None
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.skip.weight.zero_()
            self.skip.bias.zero_()
            for c in range(3):
                self.skip.weight[c, c, 1, 1] = 1.0

    def image_context(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, 3, H, W) whole images -> (B, dim) context vectors, or None without ``global_context``."""
        if self.context is None:
            return None
        tokens = self.embed(x - 0.5).permute(0, 2, 3, 1)
        for block in self.blocks[: self.context_at]:
            tokens = block(tokens)
        return self.context(tokens)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, keep: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of ``cfg.multiple`` -> refined image, same shape.

        ``context`` (B, dim) from ``image_context`` of the whole image, when ``x`` is a tile of it;
        by default ``x`` is taken to be the whole image. ``keep`` (h, w): only the top-left h x w of the
        output is wanted (the rest is padding); the result is then cropped to it."""
        p = self.cfg.patch
        # token-major memory: the layer norms and linear layers would otherwise copy their input first
        tokens = self.embed(x - 0.5).permute(0, 2, 3, 1).contiguous()  # (B, H/p, W/p, dim)
        for i, block in enumerate(self.blocks):
            if self.context is not None and i == self.context_at:
                summary = self.context(tokens) if context is None else context.to(tokens.dtype)
                tokens = tokens + summary[:, None, None, :]
            tokens = block(tokens)
        patches = self.head(self.norm(tokens))  # (B, H/p, W/p, 3*p*p)
        residual = F.pixel_shuffle(patches.permute(0, 3, 1, 2), p)
        out = self.skip(x) + residual
        if keep is not None:
            # each 3x3 layer of the detail head sees one pixel further: with that many pixels of margin
            # the kept part is exactly what the whole image gives, and padding costs no full-resolution work
            h, w = (min(n + self.cfg.detail_layers, size) for n, size in zip(keep, x.shape[-2:]))
            x, out = x[..., :h, :w], out[..., :h, :w]
        if self.detail is not None:
            out = self.detail(x, out)
        return out if keep is None else out[..., : keep[0], : keep[1]]
