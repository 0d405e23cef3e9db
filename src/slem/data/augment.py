"""Weak and strong augmentations for consistency objectives (DAC-MR), batched on tensors.

The input kind decides the transforms:

* signals ``(n, c, L)``: circular shift, Gaussian jitter, and (strong) a masked segment;
* images ``(n, c, h, w)``: random translation with zero padding, horizontal flip (weak and
  strong), and (strong) a cutout square plus Gaussian noise;
* tables ``(n, d)``: Gaussian noise, and (strong) feature dropout.

Inputs are assumed standardized (as :class:`slem.data.Task` makes them), so noise scales are
in units of a feature's standard deviation. Everything draws from the given generator.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Strength = Literal["weak", "strong"]


def augment(x: Tensor, strength: Strength, generator: torch.Generator) -> Tensor:
    """A randomly transformed copy of the batch ``x``."""
    if x.dim() == 3:
        return _signal(x, strength, generator)
    if x.dim() == 4:
        return _image(x, strength, generator)
    return _table(x, strength, generator)


def _rand(shape: tuple[int, ...], x: Tensor, g: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(x.device)


def _randn(shape: tuple[int, ...], x: Tensor, g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g, device=g.device).to(x.device, x.dtype)


def _randint(high: int, shape: tuple[int, ...], x: Tensor, g: torch.Generator) -> Tensor:
    return torch.randint(0, high, shape, generator=g, device=g.device).to(x.device)


def _signal(x: Tensor, strength: Strength, g: torch.Generator) -> Tensor:
    n, _, length = x.shape
    max_shift = 2 if strength == "weak" else 6
    shift = _randint(2 * max_shift + 1, (n,), x, g) - max_shift
    positions = (torch.arange(length, device=x.device)[None, :] - shift[:, None]) % length
    out = torch.gather(x, 2, positions[:, None, :].expand_as(x))
    out = out + (0.05 if strength == "weak" else 0.2) * _randn(tuple(x.shape), x, g)
    if strength == "strong":
        width = max(1, length // 4)
        start = _randint(length - width + 1, (n,), x, g)
        idx = torch.arange(length, device=x.device)[None, :]
        mask = (idx >= start[:, None]) & (idx < start[:, None] + width)
        out = out.masked_fill(mask[:, None, :], 0.0)
    return out


def _image(x: Tensor, strength: Strength, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    pad = 2 if strength == "weak" else 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = _randint(2 * pad + 1, (n,), x, g)
    dx = _randint(2 * pad + 1, (n,), x, g)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    flip = _rand((n,), x, g) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    if strength == "strong":
        size = max(1, h // 3)
        cy = _randint(h - size + 1, (n,), x, g)
        cx = _randint(w - size + 1, (n,), x, g)
        yy = torch.arange(h, device=x.device)[None, :, None]
        xx = torch.arange(w, device=x.device)[None, None, :]
        box = (
            (yy >= cy[:, None, None])
            & (yy < cy[:, None, None] + size)
            & (xx >= cx[:, None, None])
            & (xx < cx[:, None, None] + size)
        )
        out = out.masked_fill(box[:, None], 0.0) + 0.1 * _randn(tuple(x.shape), x, g)
    return out


def _table(x: Tensor, strength: Strength, g: torch.Generator) -> Tensor:
    out = x + (0.05 if strength == "weak" else 0.3) * _randn(tuple(x.shape), x, g)
    if strength == "strong":
        out = out * (_rand(tuple(x.shape), x, g) >= 0.2)
    return out


def dac_views(x: Tensor, n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """DAC-MR's unlabeled batch (Shu et al. 2023): ``n`` rows of ``x`` drawn with
    ``generator``, under a weak (``weak``) and a strong (``strong``) augmentation."""
    pick = torch.randint(0, len(x), (n,), generator=generator).to(x.device)
    unlabeled = x[pick]
    return {
        "weak": augment(unlabeled, "weak", generator),
        "strong": augment(unlabeled, "strong", generator),
    }
