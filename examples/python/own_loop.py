"""Meta-learned sample weighting (MW-Net) added to a plain PyTorch training loop.

Everything here is ordinary PyTorch: your data, your model, your optimizer, your DataLoader
and your loop. The lines marked ``# slem`` are all it takes to add meta-learned sample
weighting: a small trusted meta set steers a weighting net, which learns to down-weight
samples whose labels are likely wrong. The data: 4 Gaussian classes in 20 dimensions, 40% of
the training labels flipped, 10 clean samples per class as the meta set.

    python examples/python/own_loop.py --epochs 10 --save runs/my_rule

``--save`` writes the learned rule as a methodology artifact: apply it frozen to a new task
with ``examples/python/frozen_rule.py``, ``slem apply`` or ``slem.train.apply``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from slem.train import MetaWeighting  # slem


def noisy_blobs(
    n: int, noise: float, seed: int, classes: int = 4, dim: int = 20
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` samples of ``classes`` Gaussian blobs (fixed centres), a fraction ``noise`` of
    labels flipped to another class; returns inputs, given labels and true labels."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 0.6
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    flip = torch.rand(n, generator=g) < noise
    other = (y + torch.randint(1, classes, (n,), generator=g)) % classes
    return x, torch.where(flip, other, y), y


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000, help="training samples")
    parser.add_argument("--save", default=None, help="write the learned rule here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x, y, y_true = noisy_blobs(args.n, noise=0.4, seed=0)  # 40% of the labels wrong
    x_meta, y_meta, _ = noisy_blobs(40, noise=0.0, seed=1)  # small, trusted
    x_test, y_test, _ = noisy_blobs(2000, noise=0.0, seed=2)

    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    weighting = MetaWeighting(model, optimizer, meta=(x_meta, y_meta))  # slem

    for epoch in range(args.epochs):
        model.train()
        for xb, yb in loader:
            loss = weighting.step(xb, yb)  # slem: was F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, x_test, y_test):.3f}")

    if args.save:
        weighting.save(args.save, dataset="noisy blobs", noise="symmetric:0.4")  # slem
    # what the rule learned: the weight of every training sample, from its loss
    model.eval()
    with torch.no_grad():
        weights = weighting.methodology(F.cross_entropy(model(x), y, reduction="none"))
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
    main()
