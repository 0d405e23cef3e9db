"""``slem apply`` extras: the baselines of ``--compare`` on the same task, and the line that
says which model and optimizer settings came from the artifact's training config.

``slem apply ARTIFACT --data D --compare erm,gce --out OUT`` writes the applied run to OUT,
each baseline to ``OUT/compare/METHOD`` (same data config and seed, same model and optimizer
settings) and the side-by-side table to ``OUT/compare.json``. The baselines are recorded in
``OUT/compare.json`` as soon as the applied run starts, so ``slem apply --resume OUT``
finishes the comparison; a baseline whose ``summary.json`` exists is not trained again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from slem.errors import SlemError
from slem.rundir import atomic_write_text
from slem.train.config import TrainConfig, parse_train_config
from slem.train.methods import get_method, method_names
from slem.train.trainer import Stoppable

COMPARE_FILE = "compare.json"
COMPARE_DIR = "compare"
#: the config keys a baseline takes from the applied run (every method reads them)
SHARED_KEYS = (
    "data",
    "model",
    "optim",
    "seed",
    "device",
    "threads",
    "checkpoint_every",
    "select_on",
    "loggers",
)


def baseline_refusal(name: str, target: str | None = None) -> str | None:
    """Why method ``name`` cannot run as a baseline of an applied run on a ``target`` task
    (``classification``, ``regression``; None: either), or None when it can."""
    if name not in method_names():
        return "no such method"
    spec = get_method(name)
    if spec.frozen_artifact:
        return "it trains with an artifact"
    if spec.is_meta or spec.meta_train is not None:
        return "it meta-learns"
    if spec.meta_set != "never":
        return "it needs a clean meta set, which an applied run has not"
    if target is not None and spec.target not in (None, target):
        return f"it is for {spec.target} targets, the artifact for {target}"
    return None


def baseline_names(target: str | None = None) -> list[str]:
    """The registered methods that can run as a baseline on a ``target`` task."""
    return [n for n in method_names() if baseline_refusal(n, target) is None]


def parse_compare(given: Sequence[str], target: str | None = None) -> list[str]:
    """The baselines of ``--compare`` (each value comma-separated; repeats dropped).

    Raises:
        SlemError: no name, or a name that cannot run as a baseline (the valid ones listed).
    """
    names = list(dict.fromkeys(n.strip() for value in given for n in value.split(",")))
    names = [n for n in names if n]
    valid = ", ".join(baseline_names(target))
    if not names:
        raise SlemError(f"--compare needs method names, e.g. --compare erm,gce; use {valid}")
    for name in names:
        why = baseline_refusal(name, target)
        if why is not None:
            raise SlemError(f"--compare {name}: cannot run as a baseline ({why}); use {valid}")
    return names


def baseline_config(applied: TrainConfig, name: str) -> TrainConfig:
    """The config of baseline ``name``: the applied run's data, seed, model and optimizer
    settings (and device, threads, loggers), the method's own sections at their defaults.

    Raises:
        SlemError: the method cannot train with these settings (one line, prefixed
            ``--compare NAME``).
    """
    values = applied.model_dump(mode="json")
    try:
        return parse_train_config({"method": name, **{k: values[k] for k in SHARED_KEYS}})
    except SlemError as exc:
        raise SlemError(f"--compare {name}: {exc}") from None


#: the row keys every row shares (the task and what was measured): compare.json holds them once
TASK_KEYS = ("dataset", "noise", "seed", "metric", "selected_on")


def write_compare(out: Path, baselines: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """``OUT/compare.json``: the task, the baselines asked for and the table's rows so far
    (:func:`row_of`, the applied run's first)."""
    doc: dict[str, Any] = {k: rows[0].get(k) for k in TASK_KEYS} if rows else {}
    doc["baselines"] = list(baselines)
    doc["rows"] = [{k: v for k, v in row.items() if k not in TASK_KEYS} for row in rows]
    path = out / COMPARE_FILE
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def read_compare(out: Path) -> list[str] | None:
    """The baselines recorded in ``OUT/compare.json`` (None when OUT compares nothing).

    Raises:
        SlemError: the file is damaged.
    """
    path = out / COMPARE_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["baselines"]
    except (OSError, ValueError, KeyError, TypeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SlemError(
            f"{path} is damaged; restore it, or delete it to resume without the comparison"
        )
    return names


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``summary.json``.

    Raises:
        SlemError: it is damaged.
    """
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        raise SlemError(f"{path} is damaged; delete {run_dir} to train that run again")
    return summary


def row_of(label: str, run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the table: the final-epoch test metric and the one at the epoch chosen on
    validation (never on test), the training seconds."""
    regression = summary.get("metric") == "test_mse"
    metric = "test_mse" if regression else "test_accuracy"
    return {
        "method": label,
        "run_dir": str(run_dir),
        "dataset": summary.get("dataset"),
        "noise": summary.get("noise"),
        "seed": summary.get("seed"),
        "metric": metric,
        metric: summary.get(metric),
        f"{metric}_at_best_val": summary.get(f"{metric}_at_best_val"),
        "best_epoch": summary.get("best_epoch"),
        "selected_on": summary.get("selected_on", "val_mae" if regression else None),
        "seconds": summary.get("seconds"),
    }


def run_baselines(
    out: Path,
    applied: TrainConfig,
    baselines: Sequence[str],
    run: Callable[[TrainConfig, Path, bool], Any],
    read_config: Callable[[Path], TrainConfig],
) -> list[dict[str, Any]]:
    """Train each baseline into ``OUT/compare/NAME`` (``run(config, run_dir, resume)``),
    resuming one that started (its own config, by ``read_config``) and reading back one that
    finished; return the table's rows, the applied run's first, and write ``compare.json``
    after each."""
    rows = [row_of("apply", out, read_summary(out))]
    write_compare(out, baselines, rows)
    for name in baselines:
        run_dir = out / COMPARE_DIR / name
        if not (run_dir / "summary.json").is_file():
            if (run_dir / "config.yaml").is_file():
                run(read_config(run_dir), run_dir, True)
            else:
                run(baseline_config(applied, name), run_dir, False)
        rows.append(row_of(name, run_dir, read_summary(run_dir)))
        write_compare(out, baselines, rows)
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rich table of ``rows``: method, final-epoch and best-validation-epoch test metric,
    training seconds."""
    from rich.table import Table

    metric = rows[0]["metric"]
    name = "test MSE" if metric == "test_mse" else "test acc"
    on = str(rows[0].get("selected_on") or "val").replace("_", " ")
    table = Table("method", f"{name} (final)", f"{name} (best {on} epoch)", "train s")
    for row in rows:
        final, best = row.get(metric), row.get(f"{metric}_at_best_val")
        at = f" ({row['best_epoch']})" if best is not None and row.get("best_epoch") else ""
        seconds = row.get("seconds")
        table.add_row(
            str(row["method"]),
            _number(final),
            _number(best) + at,
            f"{seconds:.1f}" if isinstance(seconds, int | float) else "-",
        )
    return table


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


# --- the settings an applied run inherits -------------------------------------------------


def _auto_arch(shape: Sequence[int]) -> str:
    """What ``model.arch auto`` builds for inputs of ``shape`` (as
    :func:`slem.train.models.build_model`)."""
    return {1: "mlp", 2: "cnn1d", 3: "cnn2d"}.get(len(shape), "mlp")


def _inputs_text(shape: Sequence[int]) -> str:
    dims = "x".join(str(s) for s in shape)
    return {1: f"{dims} features", 2: f"{dims} signals", 3: f"{dims} images"}.get(
        len(shape), f"{dims} inputs"
    )


def inherited_settings(
    config: TrainConfig, trained: Mapping[str, Any], shape: Sequence[int], parameters: int
) -> list[str]:
    """Two lines: the model that was built (arch, width, parameters) and the optimizer
    settings, each saying which settings came from the artifact's training config
    ``trained`` and how to override them; the arch when ``auto`` re-chose it for these
    inputs, and the arch the artifact was meta-trained with when it differs."""
    m, base_m = config.model, dict(trained.get("model") or {})
    arch = _auto_arch(shape) if m.arch == "auto" else m.arch
    keys = ["width", *(["depth"] if arch == "mlp" else [])]
    model = f"model: {arch} width {m.width}" + (f" depth {m.depth}" if arch == "mlp" else "")
    notes = []
    if m.arch == "auto":
        notes.append(f"auto: {arch} for {_inputs_text(shape)}")
    from_artifact = [k for k in keys if k in base_m and base_m[k] == getattr(m, k)]
    base_arch = base_m.get("arch")
    other_arch = m.arch == "auto" and base_arch not in (None, "auto", arch)
    if from_artifact:
        said = f"{' and '.join(from_artifact)} from the artifact's training config"
        notes.append(said + (f", meta-trained with arch {base_arch}" if other_arch else ""))
        smaller = 16 if m.width > 16 else "N"
        hints = [f"--set model.width={smaller}"] if "width" in from_artifact else []
        hints += [f"--set model.arch={base_arch}"] if other_arch else []
        if hints:
            notes.append(f"override with {' or '.join(hints)}")
    model += f", {parameters:,} parameters" + (f" ({'; '.join(notes)})" if notes else "")
    o, base_o = config.optim, dict(trained.get("optim") or {})
    shown = {
        "optimizer": o.optimizer,
        "lr": f"lr {o.lr:g}",
        "momentum": f"momentum {o.momentum:g}" if o.optimizer != "adam" else "",
        "weight_decay": f"weight decay {o.weight_decay:g}",
        "schedule": f"{o.schedule} schedule",
        "batch_size": f"batch {o.batch_size}",
        "epochs": f"{o.epochs} epoch{'s' if o.epochs != 1 else ''}",
    }
    yours = [k for k in shown if k not in base_o or base_o[k] != getattr(o, k)]
    source = "from the artifact's training config"
    if len(yours) == len(shown):
        source = "your settings"
    elif yours:
        source += f" except {', '.join(yours)}"
    optim = f"optim: {', '.join(v for v in shown.values() if v)} ({source}; override with "
    optim += "--set optim.KEY=VALUE)"
    return [model, optim]


def settings_announcer(
    config: TrainConfig, trained: Mapping[str, Any], say: Callable[[str], None]
) -> Callable[[Stoppable], None]:
    """An ``on_trainer`` hook that says :func:`inherited_settings` once the trainer (and its
    model) is built, before training starts."""

    def announce(trainer: Stoppable) -> None:
        task, model = getattr(trainer, "task", None), getattr(trainer, "model", None)
        if task is None or model is None:
            return
        shape = tuple(task.train.X.shape[1:])
        parameters = sum(p.numel() for p in model.parameters())
        for line in inherited_settings(config, trained, shape, parameters):
            say(line)

    return announce
