"""Meta-training a learned black-box optimizer (Chen et al., 2017) on synthetic functions.

Each meta step draws a batch of differentiable training functions (GP samples, quadratics,
shifted standard functions), lets the RNN search each for ``steps`` queries, and descends one
of the paper's losses, back-propagated through the queries and observed values:

- ``sum``: the sum of observed values (find low values at every step);
- ``oi``: observed improvement, ``sum_t min(y_t - min_{j<t} y_j, 0)`` (only improvements
  count, so exploration is free);
- ``ei``: minus the expected improvement of each query under a GP fitted to the queries before
  it (fixed RBF kernel), which rewards promising queries even when they do not pay off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slem.data.functions import training_batch
from slem.errors import SlemError
from slem.methodology.bbo import RNNBlackBoxOptimizer, propose_and_observe
from slem.train.artifacts import save_methodology
from slem.train.callbacks import Callback, CheckpointCallback
from slem.train.config import BBOConfig
from slem.train.guard import NonFiniteLoss
from slem.train.loop import Iterations, MetaLearner
from slem.train.record import RunRecord, meta_loss_array

#: the meta loss of each ``BBOConfig.loss`` in words (per query: the sum over a search of
#: ``steps`` queries, divided by ``steps``, averaged over the batch of functions)
META_LOSS_LABELS = {
    "sum": "meta loss (sum):\nmean observed function value per query",
    "oi": "meta loss (oi):\nobserved improvement per query (<= 0)",
    "ei": "meta loss (ei):\nminus the expected improvement per query",
}


def observed_improvement(ys: Tensor) -> Tensor:
    """``sum_t min(y_t - min_{j<t} y_j, 0)`` per function, for ``ys`` of shape (T, B).

    The best value before ``t`` is a constant here (no gradient): the sum telescopes to
    ``best_T - y_1``, so with a gradient through it the cheapest way to "improve" would be a
    worse first query."""
    best_before = torch.cummin(ys.detach(), dim=0).values[:-1]
    return torch.clamp(ys[1:] - best_before, max=0.0).sum(0)


def expected_improvement(xs: Tensor, ys: Tensor, lengthscale: float) -> Tensor:
    """``sum_t EI(x_t)`` per function under a zero-mean GP on the queries before ``t``."""
    total = torch.zeros(ys.shape[1], dtype=ys.dtype)
    normal = torch.distributions.Normal(0.0, 1.0)
    for t in range(1, xs.shape[0]):
        past_x, past_y = xs[:t].transpose(0, 1), ys[:t].T  # (B, t, d), (B, t)
        k = torch.exp(-(torch.cdist(past_x, past_x) ** 2) / (2 * lengthscale**2))
        k = k + 1e-4 * torch.eye(t)
        k_star = torch.exp(
            -((past_x - xs[t][:, None, :]) ** 2).sum(-1) / (2 * lengthscale**2)
        )  # (B, t)
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(past_y[..., None], chol).squeeze(-1)
        v = torch.cholesky_solve(k_star[..., None], chol).squeeze(-1)
        mean = (k_star * alpha).sum(-1)
        std = (1.0 - (k_star * v).sum(-1)).clamp_min(1e-9).sqrt()
        best = past_y.min(-1).values
        z = (best - mean) / std
        total = total + (best - mean) * normal.cdf(z) + std * normal.log_prob(z).exp()
    return total


class BBOMetaTrainer(MetaLearner):
    """Meta-trains an :class:`RNNBlackBoxOptimizer` for ``cfg.dim`` dimensions, run by
    :class:`~slem.train.loop.Loop`."""

    net: RNNBlackBoxOptimizer

    def __init__(self, cfg: BBOConfig, callbacks: Sequence[Callback] = ()) -> None:
        super().__init__(callbacks)
        self.cfg = cfg
        self.plan, self.label = Iterations(cfg.iterations), "meta-training the black-box optimizer"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1_000_003)
            self.net = RNNBlackBoxOptimizer(cfg.dim, cfg.hidden, cfg.layers)
        self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def meta_step(self) -> float:
        c = self.cfg
        functions = training_batch(c.families, c.batch_size, c.dim, self.generator)
        xs, ys = propose_and_observe(self.net, functions, c.steps, c.batch_size, self.generator)
        if c.loss == "sum":
            per_function = ys.sum(0)
        elif c.loss == "oi":
            per_function = observed_improvement(ys)
        else:
            per_function = -expected_improvement(xs, ys, c.ei_lengthscale)
        loss = per_function.mean() / c.steps
        self.meta_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), c.clip)
        self.meta_optimizer.step()
        with torch.no_grad():
            best = ys.min(0).values.mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"the black-box optimizer's meta loss became {value} at iteration "
                f"{self.iteration + 1}; lower lr"
            )
        self.history.append(
            {"iteration": self.iteration + 1, "meta_loss": value, "best_value": float(best)}
        )
        return value


@torch.no_grad()
def search_regret(net: RNNBlackBoxOptimizer, functions: Any, budget: int, seed: int = 0) -> Tensor:
    """Simple regret (best value so far minus the minimum) after each query, (budget, B), for
    the frozen proposer on a batch of functions."""
    if functions.dim != net.dim:
        raise SlemError(
            f"this black-box optimizer searches {net.dim}-D spaces; '{functions.name}' is "
            f"{functions.dim}-D: meta-train one with --dim {functions.dim}"
        )
    batch = len(functions.minimum)
    g = torch.Generator().manual_seed(seed)
    _, ys = propose_and_observe(net, functions, budget, batch, g)
    return torch.cummin(ys, dim=0).values - functions.minimum


@torch.no_grad()
def random_search_regret(functions: Any, budget: int, seed: int = 0) -> Tensor:
    batch = len(functions.minimum)
    g = torch.Generator().manual_seed(seed)
    ys = functions(torch.rand(budget, batch, functions.dim, generator=g))
    return torch.cummin(ys, dim=0).values - functions.minimum


def bbo_run(
    cfg: BBOConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
    render: Callable[[RunRecord, Path], Sequence[Path]] | None = None,
) -> RunRecord:
    """``slem bbo train``: meta-train into ``run_dir`` (resumable from its checkpoint), write
    the artifact, ``meta_metrics.jsonl``, the plots (by ``render``, e.g.
    :func:`slem.report.write_run_plots`) and ``summary.json`` with the regret on 32 unseen GP
    samples against random search. Returns the record: the meta-training history, the
    summary and the ``meta_loss`` curve."""
    from slem.data.functions import held_out

    checkpoint = run_dir / "meta_checkpoint.pt"
    meta = BBOMetaTrainer(cfg, [CheckpointCallback(checkpoint, cfg.checkpoint_every)])
    if resume and checkpoint.is_file():
        meta.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(meta)
    meta.fit(progress)
    net = meta.net
    save_methodology(
        net,
        run_dir / "methodology",
        cfg,
        trained_on={"families": list(cfg.families), "loss": cfg.loss, "steps": cfg.steps},
    )
    with (run_dir / "meta_metrics.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in meta.history)
    test = held_out(f"gp{cfg.dim}", batch=32)
    summary: dict[str, Any] = {
        "held_out_regret": float(search_regret(net, test, cfg.steps)[-1].mean()),
        "random_search_regret": float(random_search_regret(test, cfg.steps)[-1].mean()),
        "iterations": meta.iteration,
        "seconds": round(meta.elapsed, 1),
    }
    info = {
        "meta_loss_label": META_LOSS_LABELS[cfg.loss],
        "meta_title": (
            f"meta-training the black-box optimizer ({cfg.dim}-D, loss {cfg.loss}, "
            f"{cfg.steps} queries per search)"
        ),
    }
    record = RunRecord(list(meta.history), summary, meta_loss_array(meta.history), info)
    if render is not None:
        summary["plots"] = [str(p) for p in render(record, run_dir)]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return record
