"""Noisy-label and imbalance benchmark of the sample-weighting methodologies.

    python benchmarks/noisy_labels.py [--quick] [--json PATH] [--cache DIR]
        [--datasets mnist1d,fashion-mnist] [--corruptions sym40,pair40,...] [--methods ...]
        [--seeds 3] [--epochs N] [--no-transfer | --transfer-only] [--report]

Grid: datasets x corruptions x methods x seeds. Every run trains with the same harness
(``slem.train``); the reported test accuracy is the final epoch's (no selection on test), and
``test_accuracy_at_best_val`` is the epoch chosen on the noisy validation split. Weighting
methods also report the AUC of their weights for telling truly clean from truly noisy
samples, and the median meta-step time relative to an ERM (warm-up) step in the same run.

Transfer: a CMW-Net meta-learned on MNIST-1D with 40% symmetric noise is applied, frozen and
without a meta set, to MNIST-1D with 40% pair-flip noise and to Fashion-MNIST with 40%
symmetric noise, against ERM and GCE there.

Every finished run is appended to ``CACHE/runs.jsonl`` and skipped when the script runs again,
so a long benchmark can be stopped and continued. ``--quick``: MNIST-1D, symmetric 40%, ERM
and MW-Net, one seed (under 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slem.data import build_task
from slem.data.sources.fashion_mnist import find_dir
from slem.methodology import load_methodology
from slem.provenance import provenance
from slem.train import make_trainer, parse_train_config
from slem.train.artifacts import save_methodology as write_artifact

CORRUPTIONS: dict[str, dict[str, Any]] = {
    "sym20": {"noise": "symmetric:0.2"},
    "sym40": {"noise": "symmetric:0.4"},
    "sym60": {"noise": "symmetric:0.6"},
    "pair40": {"noise": "pairflip:0.4"},
    "inst40": {"noise": "instance:0.4"},
    "lt10": {"imbalance": 10},
    "lt100": {"imbalance": 100},
}
#: method name in the tables -> (slem method, meta objective or None)
METHODS: dict[str, tuple[str, str | None]] = {
    "ERM": ("erm", None),
    "GCE": ("gce", None),
    "SCE": ("sce", None),
    "class-balanced": ("class_balanced", None),
    "MW-Net": ("mwnet", "clean"),
    "CMW-Net": ("cmwnet", "clean"),
    "CMW-Net-SL": ("cmwnet_sl", "clean"),
    "MW-Net + DAC-MR (no meta set)": ("mwnet", "dac"),
    "MW-Net (class-normalized)": ("mwnet", "clean"),
    "MW-Net + DAC-MR (class-normalized)": ("mwnet", "dac"),
}
#: extra ``meta`` settings of a method row
META_EXTRA: dict[str, dict[str, Any]] = {
    "MW-Net (class-normalized)": {"normalize_weights": "class"},
    "MW-Net + DAC-MR (class-normalized)": {"normalize_weights": "class"},
}
#: rows that are only run under label noise (per-class normalization undoes the re-weighting
#: an imbalanced task needs)
NOISE_ONLY = {"MW-Net (class-normalized)", "MW-Net + DAC-MR (class-normalized)"}
#: transfer rows: the source rule (a ``SOURCE_VARIANTS`` key, "" for plain CMW-Net) and how
#: its weights are normalized on the target (per batch, as it was meta-trained, or per label)
TRANSFERRED = {
    "CMW-Net transferred": ("", "batch"),
    "CMW-Net transferred (class-normalized)": ("", "class"),
    "monotone CMW-Net transferred": ("monotone", "batch"),
}
#: source rules other than the plain CMW-Net: their extra ``meta`` settings
SOURCE_VARIANTS: dict[str, dict[str, Any]] = {"monotone": {"monotone": True}}
#: ``--report``: tables from the cache only, nothing is trained
REPORT_ONLY = False
#: Fashion-MNIST is sized for a 2-core CPU (the full grid is ~500 training runs): 10,000
#: training images, a width-16 CNN, 20 epochs (an ERM run is ~40 s on one core).
DATASETS: dict[str, dict[str, Any]] = {
    "mnist1d": {"data": {"name": "mnist1d"}, "model": {"arch": "cnn1d", "width": 32}, "epochs": 30},
    "fashion-mnist": {
        "data": {"name": "fashion-mnist", "size": 10000},
        "model": {"arch": "cnn2d", "width": 16},
        "epochs": 20,
    },
}


def epochs_for(dataset: str, args: argparse.Namespace) -> int:
    """``--epochs`` when given, else the dataset's own."""
    return int(args.epochs or DATASETS[dataset]["epochs"])


def run_config(dataset: str, corruption: str, method: str, seed: int, epochs: int) -> Any:
    slem_method, objective = METHODS[method]
    spec = DATASETS[dataset]
    data = {**spec["data"], **CORRUPTIONS[corruption], "seed": seed}
    if objective != "dac":
        data["meta_per_class"] = 10  # every method may use the same clean data (ERM ignores it)
    values: dict[str, Any] = {
        "method": slem_method,
        "data": data,
        "model": spec["model"],
        "optim": {"epochs": epochs, "batch_size": 128, "lr": 0.05},
        "seed": seed,
    }
    if objective is not None:
        # rows name their normalization so that a change of the library default cannot
        # silently change what a cached row means (the paper normalizes per batch)
        meta = {"objective": objective, "normalize_weights": "batch"}
        values["meta"] = {**meta, **META_EXTRA.get(method, {})}
    return parse_train_config(values)


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def execute(
    key: str,
    config: Any,
    cache: dict[str, dict[str, Any]],
    cache_file: Path,
    extra: dict[str, Any],
    save_methodology: Path | None = None,
    methodology: Any = None,
) -> dict[str, Any] | None:
    """The cached row of ``key``, or the row of a fresh run (None under ``--report``)."""
    if key in cache:
        return cache[key]
    if REPORT_ONLY:
        return None
    start = time.perf_counter()
    task = build_task(config.data)
    trainer = make_trainer(config, task, methodology=methodology)
    result = trainer.fit(progress=False)
    if save_methodology is not None and trainer.methodology is not None:
        write_artifact(
            trainer.methodology,
            save_methodology,
            config,
            task,
            trained_on={"epochs": trainer.progress.epoch, "seed": config.seed},
        )
    s = result.summary
    row = {
        "key": key,
        **extra,
        "test_accuracy": s["test_accuracy"],
        "test_accuracy_at_best_val": s["test_accuracy_at_best_val"],
        "val_accuracy": s["val_accuracy"],
        "weight_auc": s["weight_auc"],
        "meta_step_time_ratio": s["meta_step_time_ratio"],
        "epochs": s["epochs"],
        "seconds": round(time.perf_counter() - start, 1),
        "seed": config.seed,
        "provenance": provenance(),
    }
    cache[key] = row
    with cache_file.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "provenance"}), flush=True)
    return row


def grid(
    args: argparse.Namespace, cache: dict[str, dict[str, Any]], cache_file: Path
) -> list[dict[str, Any]]:
    rows = []
    for dataset in args.datasets:
        if dataset == "fashion-mnist" and find_dir() is None:
            print("skipping fashion-mnist: files not installed")
            continue
        epochs = epochs_for(dataset, args)
        for seed in range(args.seeds):  # a whole table per seed, then the next seed
            for corruption in args.corruptions:
                for method in args.methods:
                    if method in NOISE_ONLY and "noise" not in CORRUPTIONS[corruption]:
                        continue
                    key = f"{dataset}|{corruption}|{method}|{seed}|{epochs}"
                    cfg = run_config(dataset, corruption, method, seed, epochs)
                    row = execute(
                        key,
                        cfg,
                        cache,
                        cache_file,
                        {
                            "dataset": dataset,
                            "noise": corruption,
                            "method": method,
                            "seed": seed,
                        },
                    )
                    if row is not None:
                        rows.append(row)
    return rows


def source_rule(
    args: argparse.Namespace,
    cache: dict[str, dict[str, Any]],
    cache_file: Path,
    artifacts: Path,
    variant: str,
    seed: int,
) -> Path | None:
    """The CMW-Net ``variant`` meta-learned on MNIST-1D sym40 (seed ``seed``), trained first
    when its artifact is missing (None under ``--report``)."""
    suffix = f"-{variant}" if variant else ""
    source = artifacts / f"cmwnet{suffix}-mnist1d-sym40-s{seed}"
    if (source / "methodology.json").is_file():
        return source
    if REPORT_ONLY:
        return None
    epochs = epochs_for("mnist1d", args)
    cfg = run_config("mnist1d", "sym40", "CMW-Net", seed, epochs)
    if variant:
        values = cfg.model_dump(mode="json")
        values["meta"].update(SOURCE_VARIANTS[variant])
        cfg = parse_train_config(values)
    key = f"source{suffix}|{seed}|{epochs}"
    cache.pop(key, None)
    method = f"CMW-Net{f' ({variant})' if variant else ''} (source)"
    extra = {"dataset": "mnist1d", "noise": "sym40", "method": method, "seed": seed}
    execute(key, cfg, cache, cache_file, extra, save_methodology=source)
    return source


def transfer(
    args: argparse.Namespace, cache: dict[str, dict[str, Any]], cache_file: Path, artifacts: Path
) -> list[dict[str, Any]]:
    rows = []
    for seed in range(args.seeds):
        targets = [("mnist1d", "pair40")]
        if find_dir() is not None:
            targets.append(("fashion-mnist", "sym40"))
        for dataset, corruption in targets:
            epochs = epochs_for(dataset, args)
            for method in ("ERM", "GCE", *TRANSFERRED):
                key = f"transfer|{dataset}|{corruption}|{method}|{seed}|{epochs}"
                extra_m = None
                if method in TRANSFERRED:
                    variant, normalization = TRANSFERRED[method]
                    source = source_rule(args, cache, cache_file, artifacts, variant, seed)
                    if source is None:
                        continue
                    extra_m, _ = load_methodology(source)
                    for p in extra_m.parameters():
                        p.requires_grad_(False)
                    base = run_config(dataset, corruption, "ERM", seed, epochs)
                    values = base.model_dump(mode="json")
                    values.update(method="apply", methodology=str(source))
                    values["data"]["meta_per_class"] = None
                    values["meta"] = {"normalize_weights": normalization}
                    cfg = parse_train_config(values)
                else:
                    cfg = run_config(dataset, corruption, method, seed, epochs)
                row = execute(
                    key,
                    cfg,
                    cache,
                    cache_file,
                    {
                        "transfer_from": "mnist1d sym40",
                        "dataset": dataset,
                        "noise": corruption,
                        "method": method,
                        "seed": seed,
                    },
                    methodology=extra_m,
                )
                if row is not None:
                    rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["noise"], r["method"]), []).append(r)
    out = []
    for (dataset, noise, method), rs in groups.items():

        def stat(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float | None, float | None]:
            values = [r[key] for r in rs if r.get(key) is not None]
            if not values:
                return None, None
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        acc, acc_sd = stat("test_accuracy")
        best, best_sd = stat("test_accuracy_at_best_val")
        auc, _ = stat("weight_auc")
        ratio, _ = stat("meta_step_time_ratio")
        out.append(
            {
                "dataset": dataset,
                "noise": noise,
                "method": method,
                "seeds": len(rs),
                "test_accuracy": acc,
                "test_accuracy_std": acc_sd,
                "test_accuracy_at_best_val": best,
                "test_accuracy_at_best_val_std": best_sd,
                "weight_auc": auc,
                "meta_step_time_ratio": ratio,
            }
        )
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | corruption | method | seeds | final test acc (%) | "
        "test acc at best val (%) | weight AUC | meta step / ERM step |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pct(m: float | None, s: float | None) -> str:
        return "–" if m is None else f"{100 * m:.2f} ± {100 * (s or 0):.2f}"

    for r in summary:
        auc = "–" if r["weight_auc"] is None else f"{r['weight_auc']:.3f}"
        ratio = "–" if r["meta_step_time_ratio"] is None else f"{r['meta_step_time_ratio']:.1f}x"
        lines.append(
            f"| {r['dataset']} | {r['noise']} | {r['method']} | {r['seeds']} | "
            f"{pct(r['test_accuracy'], r['test_accuracy_std'])} | "
            f"{pct(r['test_accuracy_at_best_val'], r['test_accuracy_at_best_val_std'])} | "
            f"{auc} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write results and summary to this JSON file")
    parser.add_argument("--cache", default=None, help="directory for runs.jsonl (resumable)")
    parser.add_argument("--datasets", default="mnist1d,fashion-mnist")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: 30 for MNIST-1D, 20 for Fashion-MNIST"
    )
    parser.add_argument("--no-transfer", action="store_true")
    parser.add_argument("--transfer-only", action="store_true", help="skip the grid")
    parser.add_argument(
        "--report", action="store_true", help="tables of the cached runs only; train nothing"
    )
    args = parser.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report
    if args.quick:
        args.datasets, args.corruptions, args.methods = "mnist1d", "sym40", "ERM,MW-Net"
        args.seeds, args.no_transfer = 1, True
    args.datasets = args.datasets.split(",")
    args.corruptions = args.corruptions.split(",")
    args.methods = args.methods.split(",")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"unknown method '{m}'; choose from {', '.join(METHODS)}")
    cache_dir = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="slem-bench-"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / "runs.jsonl"
    cache = load_cache(cache_file)
    start = time.perf_counter()
    rows = [] if args.transfer_only else grid(args, cache, cache_file)
    transfer_rows = (
        [] if args.no_transfer else transfer(args, cache, cache_file, cache_dir / "artifacts")
    )
    summary = summarize(rows)
    print(markdown(summary))
    if transfer_rows:
        print("\ntransfer (CMW-Net meta-learned on MNIST-1D sym40, applied frozen):")
        print(markdown(summarize(transfer_rows)))
    print(f"total {time.perf_counter() - start:.0f} s; cache {cache_file}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": [
                        {
                            k: r[k]
                            for k in (
                                "dataset",
                                "noise",
                                "method",
                                "seed",
                                "test_accuracy",
                                "test_accuracy_at_best_val",
                                "weight_auc",
                                "meta_step_time_ratio",
                            )
                        }
                        for r in rows + transfer_rows
                    ],
                    "summary": summary,
                    "transfer": summarize(transfer_rows),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
