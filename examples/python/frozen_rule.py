"""A saved weighting rule applied frozen in your own loop: three lines, no meta set.

A rule meta-learned once (here by ``examples/python/own_loop.py --save RULE``, or any
``slem train`` run of mwnet / cmwnet) is applied to a new noisy task with no clean data and no
tuning: each batch's losses go through the rule, which turns them into weights. The lines
marked ``# slem`` are the whole change to a plain PyTorch loop. A rule that reads more than the
loss (e.g. the zoo's ``label-noise``: the loss over the batch mean and each sample's loss
history) gets its inputs from a :class:`slem.methodology.inputs.TaskObserver`, which needs each
batch's sample indices and sees every batch's losses after the step.

    python examples/python/own_loop.py --save runs/my_rule
    python examples/python/frozen_rule.py --rule runs/my_rule
    python examples/python/frozen_rule.py --rule zoo:label-noise

The rule's raw weights lie in (0, 1); ``normalize_weights`` rescales them to mean 1 over the
batch, as slem's trainer does (MW-Net's normalization), so the learning rate keeps its
meaning. slem can also run the whole training: ``slem.train.apply(RULE, task)`` (a
:class:`slem.data.Task`, e.g. ``Task.from_arrays(x, y)``) or ``slem apply RULE --data NAME``.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slem.errors import SlemError
from slem.methodology import load_frozen, normalize_weights  # slem
from slem.methodology.inputs import TaskObserver  # slem

HERE = Path(__file__).resolve().parent
own_loop = runpy.run_path(str(HERE / "own_loop.py"), run_name="own_loop")  # its data and metric
noisy_blobs, accuracy = own_loop["noisy_blobs"], own_loop["accuracy"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", required=True, help="the saved rule (artifact directory)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000, help="training samples")
    args = parser.parse_args(argv)
    torch.manual_seed(1)
    x, y, y_true = noisy_blobs(args.n, noise=0.3, seed=10)  # a new task: no meta set
    x_test, y_test, _ = noisy_blobs(2000, noise=0.0, seed=11)

    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=100, shuffle=True)
    rule = load_frozen(args.rule, kinds=("mwnet", "cmwnet"))  # slem: a sample-weighting rule
    observer = TaskObserver(rule.inputs, n_train=len(y), n_classes=4)  # slem: what it reads
    total, step = args.epochs * len(loader), 0

    for epoch in range(args.epochs):
        model.train()
        observer.start_epoch()  # slem
        for xb, yb, idx in loader:
            losses = F.cross_entropy(model(xb), yb, reduction="none")  # slem
            weights = rule(observer.features(losses, idx, progress=step / total))  # slem
            loss = (normalize_weights(weights) * losses).mean()  # slem
            observer.observe(losses, idx)  # slem: the batch's losses join the histories
            step += 1
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, x_test, y_test):.3f}")

    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
        weights = rule(observer.features(losses, torch.arange(len(y)), progress=1.0))
    flipped = y != y_true
    result = {
        "test_accuracy": accuracy(model, x_test, y_test),
        "weight_clean": float(weights[~flipped].mean()),
        "weight_flipped": float(weights[flipped].mean()),
    }
    print(
        f"mean weight: clean labels {result['weight_clean']:.3f}, flipped labels "
        f"{result['weight_flipped']:.3f}; test accuracy {result['test_accuracy']:.3f}"
    )
    return result


if __name__ == "__main__":
    try:
        main()
    except SlemError as exc:  # a missing or wrong artifact: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
