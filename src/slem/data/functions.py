"""Black-box objective functions on the unit cube, as batches of differentiable torch functions.

These are the "tasks" of learned black-box optimization (Chen et al., 2017): a learned
optimizer is meta-trained on families of synthetic functions and evaluated on held-out ones.

- ``gp``: samples of a Gaussian process with an RBF kernel and a random lengthscale, drawn as
  random Fourier features (exact in distribution as the number of features grows).
- ``quadratic``: ``(x - x*)^T A (x - x*)`` with a random rotation and a log-uniform spectrum.
- ``standard``: sphere, Rosenbrock, Rastrigin, Ackley, Styblinski-Tang and Levy, randomly
  shifted and scaled.
- held out: Branin (d = 2), Hartmann-3, Hartmann-6, and GP samples from an unseen seed.

Every family maps ``x`` of shape ``(B, d)`` in ``[0, 1]^d`` to ``(B,)``, one function per row,
and is normalised to roughly zero mean and unit spread over the cube, so one optimizer sees
them on a common scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from slem.errors import SlemError

Fn = Callable[[Tensor], Tensor]
TRAINING_FAMILIES = ("gp", "quadratic", "standard")


@dataclass
class FunctionBatch:
    """``B`` objectives in ``d`` dimensions; ``minimum`` is each one's known (or estimated)
    minimum, used for regret."""

    name: str
    dim: int
    fn: Fn
    minimum: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _normalized(fn: Fn, batch: int, dim: int, g: torch.Generator, n: int = 1024) -> Fn:
    """Shift and scale each function so that, over uniform points, its median is 0 and its
    inter-quartile range 1 (robust to the huge tails of e.g. Rosenbrock)."""
    with torch.no_grad():
        values = fn(torch.rand(n, batch, dim, generator=g))  # (n, B)
    q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]), dim=0)
    center, spread = q[1], (q[2] - q[0]).clamp_min(1e-8)
    return lambda x: (fn(x) - center) / spread


def _estimated_minimum(fn: Fn, batch: int, dim: int, g: torch.Generator) -> Tensor:
    """Best of random points, refined by a few hundred Adam steps from the best 8 per row."""
    pts = torch.rand(8192, batch, dim, generator=g)
    with torch.no_grad():
        vals = fn(pts)  # (n, B)
    top = vals.topk(8, dim=0, largest=False).indices  # (8, B)
    x = pts[top, torch.arange(batch)].clone().requires_grad_(True)  # (8, B, d)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        fn(x.clamp(0, 1)).sum().backward()
        opt.step()
    with torch.no_grad():
        refined = fn(x.clamp(0, 1)).min(0).values
    return torch.minimum(vals.min(0).values, refined).detach()


def gp_samples(
    batch: int, dim: int, g: torch.Generator, lengthscale: tuple[float, float] = (0.1, 0.4)
) -> Fn:
    """Random-Fourier-feature draws of a unit-variance RBF Gaussian process."""
    m = 256
    lo, hi = math.log(lengthscale[0]), math.log(lengthscale[1])
    ls = torch.exp(lo + (hi - lo) * torch.rand(batch, 1, 1, generator=g))
    omega = torch.randn(batch, m, dim, generator=g) / ls
    phase = 2 * math.pi * torch.rand(batch, m, generator=g)
    weight = torch.randn(batch, m, generator=g)

    def fn(x: Tensor) -> Tensor:
        z = torch.einsum("bmd,...bd->...bm", omega, x) + phase
        return math.sqrt(2.0 / m) * (weight * torch.cos(z)).sum(-1)

    return fn


def quadratics(batch: int, dim: int, g: torch.Generator) -> Fn:
    q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=g))
    spectrum = torch.exp(math.log(0.1) + math.log(10 / 0.1) * torch.rand(batch, dim, generator=g))
    a = q @ torch.diag_embed(spectrum) @ q.transpose(1, 2)
    center = torch.rand(batch, dim, generator=g)

    def fn(x: Tensor) -> Tensor:
        d = x - center
        return torch.einsum("...bi,bij,...bj->...b", d, a, d)

    return fn


def _sphere(z: Tensor) -> Tensor:
    return (z**2).sum(-1)


def _rosenbrock(z: Tensor) -> Tensor:
    if z.shape[-1] == 1:
        return (1 - z[..., 0]) ** 2
    return (100 * (z[..., 1:] - z[..., :-1] ** 2) ** 2 + (1 - z[..., :-1]) ** 2).sum(-1)


def _rastrigin(z: Tensor) -> Tensor:
    return 10 * z.shape[-1] + (z**2 - 10 * torch.cos(2 * math.pi * z)).sum(-1)


def _ackley(z: Tensor) -> Tensor:
    d = z.shape[-1]
    return (
        -20 * torch.exp(-0.2 * torch.sqrt((z**2).sum(-1) / d + 1e-12))
        - torch.exp(torch.cos(2 * math.pi * z).sum(-1) / d)
        + 20
        + math.e
    )


def _styblinski_tang(z: Tensor) -> Tensor:
    return 0.5 * (z**4 - 16 * z**2 + 5 * z).sum(-1)


def _levy(z: Tensor) -> Tensor:
    w = 1 + (z - 1) / 4
    head = torch.sin(math.pi * w[..., 0]) ** 2
    mid = ((w[..., :-1] - 1) ** 2 * (1 + 10 * torch.sin(math.pi * w[..., :-1] + 1) ** 2)).sum(-1)
    tail = (w[..., -1] - 1) ** 2 * (1 + torch.sin(2 * math.pi * w[..., -1]) ** 2)
    return head + mid + tail


#: name -> (function of z, half-width of its usual domain [-r, r]^d)
STANDARD: dict[str, tuple[Fn, float]] = {
    "sphere": (_sphere, 5.0),
    "rosenbrock": (_rosenbrock, 2.0),
    "rastrigin": (_rastrigin, 5.12),
    "ackley": (_ackley, 5.0),
    "styblinski_tang": (_styblinski_tang, 5.0),
    "levy": (_levy, 10.0),
}


def shifted_standard(batch: int, dim: int, g: torch.Generator) -> Fn:
    """Each row: a random standard function on a randomly shifted, scaled window."""
    names = list(STANDARD)
    pick = torch.randint(len(names), (batch,), generator=g)
    shift = torch.rand(batch, dim, generator=g) * 0.5 - 0.25  # fraction of the domain
    zoom = 0.5 + torch.rand(batch, 1, generator=g)
    groups = [(k, torch.nonzero(pick == k).squeeze(1)) for k in range(len(names))]

    def fn(x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[:-1], dtype=x.dtype)
        for k, rows in groups:
            if len(rows):
                f, r = STANDARD[names[k]]
                z = (2 * x[..., rows, :] - 1 + shift[rows]) * r * zoom[rows]
                out = _put(out, rows, f(z))
        return out

    return fn


def _put(out: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """``out`` with ``out[..., rows] = values``, out of place so gradients flow."""
    index = rows.expand(*out.shape[:-1], len(rows))
    return out.scatter(-1, index, values)


def branin(x: Tensor) -> Tensor:
    x1, x2 = 15 * x[..., 0] - 5, 15 * x[..., 1]
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * torch.cos(x1) + s


_H3 = (
    [[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]],
    [
        [0.3689, 0.1170, 0.2673],
        [0.4699, 0.4387, 0.7470],
        [0.1091, 0.8732, 0.5547],
        [0.0381, 0.5743, 0.8828],
    ],
)
_H6 = (
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ],
    [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ],
)
_ALPHA = [1.0, 1.2, 3.0, 3.2]


def _hartmann(x: Tensor, a: list[list[float]], p: list[list[float]]) -> Tensor:
    at, pt = torch.tensor(a, dtype=x.dtype), torch.tensor(p, dtype=x.dtype)
    inner = (at * (x[..., None, :] - pt) ** 2).sum(-1)
    return -(torch.tensor(_ALPHA, dtype=x.dtype) * torch.exp(-inner)).sum(-1)


def hartmann3(x: Tensor) -> Tensor:
    return _hartmann(x, *_H3)


def hartmann6(x: Tensor) -> Tensor:
    return _hartmann(x, *_H6)


#: held-out test functions: name -> (dimension, function, known minimum)
HELD_OUT: dict[str, tuple[int, Fn, float]] = {
    "branin": (2, branin, 0.397887),
    "hartmann3": (3, hartmann3, -3.86278),
    "hartmann6": (6, hartmann6, -3.32237),
}


def training_batch(
    families: Sequence[str], batch: int, dim: int, g: torch.Generator
) -> FunctionBatch:
    """A batch of normalised training functions, the families mixed evenly."""
    unknown = [f for f in families if f not in TRAINING_FAMILIES]
    if unknown or not families:
        raise SlemError(
            f"unknown function families {unknown or families}; use {', '.join(TRAINING_FAMILIES)}"
        )
    makers = {"gp": gp_samples, "quadratic": quadratics, "standard": shifted_standard}
    parts = [batch // len(families) + (i < batch % len(families)) for i in range(len(families))]
    fns = [(makers[f](n, dim, g), n) for f, n in zip(families, parts, strict=True) if n > 0]

    def raw(x: Tensor) -> Tensor:
        out, start = [], 0
        for fn, n in fns:
            out.append(fn(x[..., start : start + n, :]))
            start += n
        return torch.cat(out, dim=-1)

    fn = _normalized(raw, batch, dim, g)
    return FunctionBatch("+".join(families), dim, fn, torch.full((batch,), float("nan")))


def held_out(name: str, batch: int = 1, seed: int = 12345) -> FunctionBatch:
    """A held-out test function (``branin``, ``hartmann3``, ``hartmann6``) or ``gpD`` (fresh GP
    samples in D dimensions from an unseen seed), with its minimum for regret."""
    g = torch.Generator().manual_seed(seed)
    if name in HELD_OUT:
        dim, f, minimum = HELD_OUT[name]
        return FunctionBatch(name, dim, f, torch.full((batch,), minimum))
    if name.startswith("gp") and name[2:].isdigit():
        dim = int(name[2:])
        if not 1 <= dim <= 32:
            raise SlemError(
                f"test function '{name}' has {dim} dimensions; gpD takes D from 1 to 32 "
                "(e.g. gp2, gp6)"
            )
        fn = gp_samples(batch, dim, g)
        return FunctionBatch(name, dim, fn, _estimated_minimum(fn, batch, dim, g))
    raise SlemError(
        f"unknown test function '{name}'; use {', '.join(HELD_OUT)} or gpD (e.g. gp2, gp6)"
    )
