"""Training-step time of the image CNN (``model.arch: cnn2d``) against the layout it replaced.

    python benchmarks/cnn_speed.py [--widths 16,32] [--batch 128] [--threads 1] [--json PATH]

Baseline: conv -> BatchNorm -> ReLU -> max-pool in NCHW. Ours: conv -> max-pool -> BatchNorm
-> ReLU, channels-last. Both are timed interleaved in one process (best of 3 rounds of 15
SGD steps on a 28x28 one-channel batch), and the speedup is the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from slem.provenance import provenance
from slem.train.models import cnn2d


def nchw_baseline(width: int, n_out: int = 10) -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, n_out),
    )


def step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 15) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="16,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    rows = []
    for width in map(int, args.widths.split(",")):
        best = {"baseline": float("inf"), "ours": float("inf")}
        for _ in range(3):
            best["baseline"] = min(best["baseline"], step_ms(nchw_baseline(width), x, y))
            best["ours"] = min(best["ours"], step_ms(cnn2d(1, 10, width), x, y))
        rows.append(
            {
                "width": width,
                "baseline_ms": round(best["baseline"], 1),
                "ours_ms": round(best["ours"], 1),
                "speedup": round(best["baseline"] / best["ours"], 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"threads": args.threads, "rows": rows, "provenance": provenance()}, indent=2
            )
        )


if __name__ == "__main__":
    main()
