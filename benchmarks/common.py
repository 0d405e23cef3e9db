"""Helpers shared by the benchmark scripts: a resumable run cache, one training run, the
"tune a learning rate on validation, then repeat over seeds" protocol, and tables."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slem.data import build_task
from slem.errors import SlemError
from slem.provenance import provenance
from slem.train import make_trainer, parse_train_config
from slem.train.artifacts import save_methodology
from slem.train.threads import set_threads


class Cache:
    """Finished runs in a JSON-lines file, keyed, so a long benchmark can be continued. Each
    new row carries ``provenance`` (versions, git revision, time: :func:`slem.provenance.
    provenance`) beside the seed its run records."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file = directory / "runs.jsonl"
        lines = self.file.read_text().splitlines() if self.file.is_file() else []
        self.rows = {r["key"]: r for r in map(json.loads, filter(str.strip, lines))}

    def run(self, key: str, fn: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
        if key not in self.rows:
            start = time.perf_counter()
            row = {"key": key, **extra, **fn(), "seconds": round(time.perf_counter() - start, 1)}
            row["provenance"] = provenance()
            self.rows[key] = row
            with self.file.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            shown = {
                k: v
                for k, v in row.items()
                if k != "provenance" and not (isinstance(v, list) and len(v) > 5)
            }
            print(json.dumps(shown), flush=True)
        return self.rows[key]


def train(
    values: dict[str, Any], methodology: Any = None, keys: tuple[str, ...] = (), save: Any = None
) -> dict[str, Any]:
    """One run of ``slem.train``; its seed, final-epoch test and validation accuracy, the
    summary's ``keys`` (and the learned rate, thinned, when the run has one). ``save``: a
    directory for the run's methodology artifact (written as ``slem train`` writes it)."""
    cfg = parse_train_config(values)
    task = build_task(cfg.data)
    trainer = make_trainer(cfg, task, methodology=methodology)
    s = trainer.fit(progress=False).summary
    if save is not None and trainer.methodology is not None:
        save_methodology(
            trainer.methodology,
            save,
            cfg,
            task,
            trained_on={"epochs": trainer.progress.epoch, "seed": cfg.seed},
        )
    out = {"seed": cfg.seed, **{k: s.get(k) for k in ("test_accuracy", "val_accuracy", *keys)}}
    trace = getattr(trainer, "lr_trace", None)
    if trace:
        out["lr_trace"] = trace[:: max(1, len(trace) // 200)]
    return out


def tuned_runs(
    cache: Cache,
    tag: str,
    target: str,
    method: str,
    grid: list[float],
    values_at: Callable[[float, int], dict[str, Any]],
    seeds: int,
    param: str = "lr",
    score: Callable[[dict[str, Any]], float] = lambda row: row["val_accuracy"],
    keys: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Grid over one hyperparameter (``param``, the learning rate by default) on seed 0, choose
    the highest ``score`` (final validation accuracy by default), then run the chosen value on
    the other seeds. Every row records the tuning cost."""
    extra = {"target": target, "method": method, "tuning_runs": len(grid)}
    tuning = {
        v: cache.run(
            f"{tag}|{method}|{param}={v}|0",
            lambda v=v: train(values_at(v, 0), keys=keys),
            seed=0,
            **{param: v},
            **extra,
        )
        for v in grid
    }
    best = max(grid, key=lambda v: score(tuning[v]))
    rows = []
    for seed in range(seeds):
        row = (
            tuning[best]
            if seed == 0
            else cache.run(
                f"{tag}|{method}|{param}={best}|{seed}",
                lambda s=seed: train(values_at(best, s), keys=keys),
                seed=seed,
                **{param: best},
                **extra,
            )
        )
        rows.append({**row, "seed": seed, f"chosen_{param}": best})
    return rows


def summarize(rows: list[dict[str, Any]], value: str = "test_accuracy") -> list[dict[str, Any]]:
    """Mean and std of ``value`` per (target, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r)
    out = []
    for (target, method), rs in groups.items():
        vals = [r[value] for r in rs]
        out.append(
            {
                "target": target,
                "method": method,
                "seeds": len(rs),
                value: statistics.mean(vals),
                f"{value}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "chosen_lr": rs[0].get("chosen_lr"),
                "tuning_runs": rs[0]["tuning_runs"],
            }
        )
    return out


def accuracy_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| target | method | seeds | final test acc (%) | chosen lr | tuning runs |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary:
        lr = "learned" if r["chosen_lr"] is None else f"{r['chosen_lr']:g}"
        lines.append(
            f"| {r['target']} | {r['method']} | {r['seeds']} | "
            f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} | {lr} | "
            f"{r['tuning_runs']} |"
        )
    return "\n".join(lines)


class ThreadsAction(argparse.Action):
    """``--threads N``: torch's CPU threads, set as soon as the option is parsed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            setattr(namespace, self.dest, set_threads(int(values)))
        except (ValueError, SlemError) as exc:
            parser.error(f"--threads: {exc}")


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark has: --quick, --json, --cache, --seeds, --threads. The
    slem default thread count (:func:`slem.train.threads.default_threads`) applies until
    --threads is parsed."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version (minutes)")
    parser.add_argument("--json", help="write results and summaries to this JSON file")
    parser.add_argument("--cache", default=None, help="directory for runs.jsonl (resumable)")
    parser.add_argument("--seeds", type=int, default=3)
    add_threads_option(parser)
    return parser


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` to a benchmark's parser and apply slem's default thread count
    until it is parsed (any script can call this on its own parser)."""
    set_threads(None)
    parser.add_argument(
        "--threads",
        action=ThreadsAction,
        default=None,
        help="CPU threads torch may use (default: min(4, cores), or OMP_NUM_THREADS)",
    )
