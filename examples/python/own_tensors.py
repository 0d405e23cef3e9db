"""Your own tensors and your own ``nn.Module``, trained by slem with MW-Net.

No dataset name, no ``data`` section, no YAML: ``Task.from_arrays`` makes a task from tensors
(or NumPy arrays) in one call (a validation split is drawn from the training samples; the
meta and test sets are yours), the config names only what differs from the defaults, and
``fit()`` shows its progress. With ``--out`` the run is written as ``slem train`` writes it
(config, metrics, model, the learned rule, plots).

    python examples/python/own_tensors.py --epochs 10 --out runs/own_tensors
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slem.data import Task
from slem.train import TrainConfig, make_trainer, train_run

HERE = Path(__file__).resolve().parent
noisy_blobs = runpy.run_path(str(HERE / "own_loop.py"), run_name="own_loop")["noisy_blobs"]


class Net(nn.Module):
    """Any module that maps a batch of inputs to ``(batch, classes)`` logits."""

    def __init__(self, dim: int = 20, classes: int = 4, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000, help="training samples")
    parser.add_argument("--out", default=None, help="write a run directory here")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    args = parser.parse_args(argv)
    x, y, y_true = noisy_blobs(args.n, noise=0.4, seed=0)  # 40% of the labels wrong
    x_meta, y_meta, _ = noisy_blobs(40, noise=0.0, seed=1)  # small, trusted
    x_test, y_test, _ = noisy_blobs(2000, noise=0.0, seed=2)

    task = Task.from_arrays(
        x,
        y,
        x_meta=x_meta,
        y_meta=y_meta,
        x_test=x_test,
        y_test=y_test,
        name="noisy blobs",
        y_true=y_true,  # optional, analysis only: the weight AUC below; never trained on
    )
    config = TrainConfig(method="mwnet", optim={"epochs": args.epochs, "batch_size": 100})
    if args.out:
        from slem.report import write_run_plots  # the plots of the run directory

        result, _ = train_run(
            config,
            args.out,
            progress=not args.quiet,
            task=task,
            model=Net(),
            render=write_run_plots,
        )
    else:
        result = make_trainer(config, task, model=Net()).fit(progress=not args.quiet)
    s = result.summary
    print(
        f"test accuracy {s['test_accuracy']:.3f}; weight AUC clean vs flipped labels "
        f"{s['weight_auc']:.3f}"
    )
    return s


if __name__ == "__main__":
    main()
