"""The virtual step of the meta step: the real optimizer's update or the official code's plain
SGD step (``meta.virtual_step: optimizer`` vs ``sgd``).

    python benchmarks/virtual_step.py [--quick] [--seeds 3] [--threads 1] [--json PATH]

1. Agreement: along one MW-Net run (MNIST-1D, 40% symmetric noise, the 1-D CNN, SGD with
   momentum 0.9 and weight decay 5e-4, the example config), every meta step's hypergradient
   is computed both ways on the same batch; per epoch, the median and maximum relative
   difference ``|g_sgd - g_opt| / |g_opt|`` and the minimum cosine. The run itself follows
   the optimizer's step.
2. Outcome: MW-Net trained with each virtual step, ``--seeds`` seeds, final and
   best-on-validation test accuracy (mean ± std), and the meta step / plain step time ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slem.bilevel import SGD, WeightedProblem, functional, hypergrad
from slem.data import build_task
from slem.methodology import build_weighting
from slem.train import parse_train_config
from slem.train.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Cache, base_parser, train

RESULTS = Path(__file__).resolve().parent / "results"
BASE: dict[str, Any] = {
    "method": "mwnet",
    "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 10},
    "optim": {"epochs": 30, "batch_size": 128, "lr": 0.05, "schedule": "cosine"},
    "meta": {"warmup_epochs": 1},
}


def agreement(epochs: int, seed: int = 0) -> list[dict[str, float]]:
    """Per epoch: relative difference and cosine of the two virtual steps' hypergradients."""
    cfg = parse_train_config({**BASE, "seed": seed})
    task = build_task(cfg.data)
    torch.manual_seed(seed)
    model = build_model(task.features.input_shape, task.n_classes, "cnn1d", 32, 2, 0.0, "relu")
    net = build_weighting("mwnet", 1, 100)
    f_model, f_net = functional(model), functional(net)
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=5e-4)
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = task.train.tensors()
    mx, my = task.meta.tensors() if task.meta is not None else (x[:0], y[:0])
    steps = len(y) // o.batch_size
    total = epochs * steps
    g = torch.Generator().manual_seed(seed)

    def per_sample(p: dict[str, torch.Tensor], b: Any) -> torch.Tensor:
        return F.cross_entropy(f_model(p, b[0]), b[1], reduction="none")

    def weights(h: dict[str, torch.Tensor], losses: torch.Tensor, b: Any) -> torch.Tensor:
        w = f_net(h, losses, torch.zeros_like(b[1]))
        return w * (len(w) / w.sum().clamp_min(1e-8))

    def outer(p: dict[str, torch.Tensor], h: dict[str, torch.Tensor], b: Any) -> torch.Tensor:
        return F.cross_entropy(f_model(p, b[0]), b[1])

    rows: list[dict[str, float]] = []
    for epoch in range(epochs):
        diffs, cosines = [], []
        perm = torch.randperm(len(y), generator=g)
        for s in range(steps):
            lr = 0.5 * o.lr * (1 + torch.cos(torch.tensor((epoch * steps + s) / total * 3.14159)))
            for group in opt.param_groups:
                group["lr"] = float(lr)
            idx = perm[s * o.batch_size : (s + 1) * o.batch_size]
            batch = (x[idx], y[idx])
            if epoch == 0:  # the ERM warm-up epoch
                loss = F.cross_entropy(model(batch[0]), batch[1])
            else:
                take = torch.randint(0, len(my), (100,), generator=g)
                meta_batch = (mx[take], my[take])
                params = {n: p for n, p in model.named_parameters() if p.requires_grad}
                grads = {}
                for mode in ("optimizer", "sgd"):
                    inner = (
                        SGD(lr=float(lr), momentum=o.momentum, weight_decay=5e-4)
                        if mode == "optimizer"
                        else SGD(lr=float(lr))
                    )
                    state = inner.state_from_torch(opt, params) if mode == "optimizer" else None
                    problem = WeightedProblem(
                        params,
                        dict(net.named_parameters()),
                        per_sample,
                        weights,
                        outer,
                        inner,
                        optimizer_state=state,
                    )
                    result = hypergrad(
                        problem, "lookahead", inner_batch=batch, outer_batch=meta_batch
                    )
                    grads[mode] = result
                a, b = grads["optimizer"].flat(), grads["sgd"].flat()
                diffs.append(float((b - a).norm() / a.norm().clamp_min(1e-30)))
                cosines.append(float(F.cosine_similarity(a, b, dim=0)))
                meta_opt.zero_grad(set_to_none=True)
                grads["optimizer"].accumulate_into(net)
                meta_opt.step()
                losses = per_sample(dict(model.named_parameters()), batch)
                with torch.no_grad():
                    w = weights(dict(net.named_parameters()), losses.detach(), batch)
                loss = (w * losses).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if diffs:
            row = {
                "epoch": epoch + 1,
                "rel_diff_median": statistics.median(diffs),
                "rel_diff_max": max(diffs),
                "cosine_min": min(cosines),
                "cosine_median": statistics.median(cosines),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    args = base_parser(__doc__).parse_args()  # --threads N sets torch's threads
    epochs = 3 if args.quick else 10
    out: dict[str, Any] = {"agreement": agreement(epochs)}
    cache = Cache(Path(args.cache) if args.cache else RESULTS / "virtual_step")
    outcome = []
    for seed in range(1 if args.quick else args.seeds):
        for mode in ("optimizer", "sgd"):
            values = {**BASE, "seed": seed, "meta": {**BASE["meta"], "virtual_step": mode}}
            if args.quick:
                values["optim"] = {**BASE["optim"], "epochs": 3}
            key = json.dumps(values, sort_keys=True)
            row = cache.run(
                key,
                lambda v=values: train(
                    v, keys=("test_accuracy_at_best_val", "meta_step_time_ratio")
                ),
                mode=mode,
                seed=seed,
            )
            outcome.append(row)
    table = []
    for mode in ("optimizer", "sgd"):
        rs = [r for r in outcome if r["mode"] == mode]
        for key in ("test_accuracy", "test_accuracy_at_best_val", "meta_step_time_ratio"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            table.append(
                {
                    "virtual_step": mode,
                    "metric": key,
                    "seeds": len(vals),
                    "mean": statistics.mean(vals) if vals else None,
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                }
            )
    out["outcome"] = table
    print(json.dumps(table, indent=1))
    target = Path(args.json) if args.json else RESULTS / "virtual_step.json"
    target.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
