"""Data-layer numbers: load and task-building times, realized corruption (docs/results).

    python benchmarks/data_layer.py [--quick] [--json PATH]

For every built-in dataset: load time, time to build a task with 40% symmetric noise and a
10-per-class meta set, and the realized noise rate; then every corruption on MNIST-1D over
several seeds (mean and spread of the realized rate and of the head/tail ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from slem.data import BUILTIN, DataConfig, LoadOptions, load_dataset, make_task
from slem.data.meta_features import meta_features
from slem.provenance import provenance


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def dataset_rows(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for name, entry in BUILTIN.items():
        if not entry.available() or (quick and name == "fashion-mnist"):
            continue
        data, t_load = timed(lambda n=name: load_dataset(n))
        overrides: dict[str, Any] = (
            {"noise": "symmetric:0.4", "meta_per_class": 10}
            if data.is_classification
            else {"noise": "mixture:0.3", "meta_size": 20}
        )
        task, t_task = timed(lambda d=data, o=overrides: make_task(d, **o))
        _, t_mf = timed(lambda t=task: meta_features(t))
        s = task.summary()
        rows.append(
            {
                "dataset": name,
                "n_train": s["n_train"],
                "n_meta": s["n_meta"],
                "n_val": s["n_val"],
                "n_test": s["n_test"],
                "noise": s["noise"],
                "noise_rate_realized": round(s["noise_rate_realized"], 4),
                "load_s": round(t_load, 3),
                "task_s": round(t_task, 3),
                "meta_features_s": round(t_mf, 3),
            }
        )
    return rows


def corruption_rows(seeds: int) -> list[dict[str, Any]]:
    data = load_dataset("mnist1d", LoadOptions(size=10_000))
    settings: list[dict[str, Any]] = [
        {"noise": "symmetric:0.2"},
        {"noise": "symmetric:0.4"},
        {"noise": "symmetric:0.6"},
        {"noise": "pairflip:0.4"},
        {"noise": "instance:0.4"},
        {"imbalance": 10.0},
        {"imbalance": 100.0},
    ]
    rows = []
    for setting in settings:
        rates, ratios = [], []
        for seed in range(seeds):
            task = make_task(data, DataConfig(name="mnist1d", seed=seed, **setting))
            rates.append(task.train.noise_rate)
            ratios.append(task.summary()["imbalance_ratio_realized"])
        rows.append(
            {
                "setting": ", ".join(f"{k}={v}" for k, v in setting.items()),
                "seeds": seeds,
                "noise_rate_mean": round(statistics.mean(rates), 4),
                "noise_rate_std": round(statistics.pstdev(rates), 4),
                "imbalance_ratio_mean": round(statistics.mean(ratios), 1),
                "imbalance_ratio_std": round(statistics.pstdev(ratios), 1),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip Fashion-MNIST, 2 seeds")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    datasets = dataset_rows(args.quick)
    corruptions = corruption_rows(2 if args.quick else 5)
    print_table(datasets)
    print_table(corruptions)
    if args.json:
        with open(args.json, "w") as fh:
            doc = {"datasets": datasets, "corruptions": corruptions, "provenance": provenance()}
            json.dump(doc, fh, indent=2)


if __name__ == "__main__":
    main()
