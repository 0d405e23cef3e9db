"""A training run on disk: build the task, train, and write the run directory.

The directory holds ``config.yaml`` (the resolved config plus seed, versions and git
revision), ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` (resumable) and
``model.safetensors``, the ``methodology/`` artifact when one was learned or applied, and
PNG plots in ``plots/``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from slem._version import __version__
from slem.data.task import Task, build_task
from slem.errors import SlemError
from slem.methodology import Methodology, load_methodology
from slem.train.callbacks import Callback, CheckpointCallback, JsonlLogger, ProgressBar
from slem.train.config import TrainConfig, parse_train_config
from slem.train.trainer import Trainer, TrainResult, make_trainer

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    return {
        "slem": __version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def default_run_dir(config: TrainConfig, root: str | Path = "runs") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.data.name.replace("/", "_").replace(":", "_")
    return Path(root) / f"{stamp}-{config.method}-{Path(name).name}-s{config.seed}"


def write_config(run_dir: Path, config: TrainConfig) -> None:
    doc = {**config.model_dump(mode="json"), "provenance": provenance()}
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SlemError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); nothing to resume")
    values = yaml.safe_load(path.read_text())
    values.pop("provenance", None)
    return parse_train_config(values)


def load_frozen_methodology(config: TrainConfig) -> Methodology | None:
    if config.method != "apply":
        return None
    assert config.methodology is not None
    methodology, _ = load_methodology(config.methodology)
    for p in methodology.parameters():
        p.requires_grad_(False)
    return methodology


def train_run(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    on_trainer: Callable[[Trainer], None] | None = None,
) -> tuple[TrainResult, Path]:
    """Train ``config`` into ``run_dir`` (continuing from its checkpoint with ``resume``)."""
    run_dir = Path(run_dir)
    if not resume and (run_dir / CHECKPOINT_FILE).exists():
        raise SlemError(
            f"'{run_dir}' already holds a run; resume it with --resume {run_dir} or choose "
            "another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_config(run_dir, config)
    task = build_task(config.data)
    callbacks: list[Callback] = [
        CheckpointCallback(run_dir / CHECKPOINT_FILE, config.checkpoint_every),
        JsonlLogger(run_dir / "metrics.jsonl"),
        *extra_callbacks,
    ]
    if progress:
        callbacks.append(ProgressBar(f"{config.method} {task.name}"))
    trainer = make_trainer(
        config, task, methodology=load_frozen_methodology(config), callbacks=callbacks
    )
    if resume:
        trainer.load_checkpoint(run_dir / CHECKPOINT_FILE)
    if on_trainer is not None:
        on_trainer(trainer)
    result = trainer.fit()
    write_outputs(run_dir, config, task, trainer, result)
    return result, run_dir


def write_outputs(
    run_dir: Path, config: TrainConfig, task: Task, trainer: Trainer, result: TrainResult
) -> None:
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()},
        str(run_dir / "model.safetensors"),
    )
    summary = dict(result.summary)
    if trainer.methodology is not None:
        artifact_dir = run_dir / "methodology"
        trained_on = {
            "dataset": task.name,
            "noise": str(task.noise) if task.noise else None,
            "imbalance": task.imbalance,
            "meta_objective": config.meta.objective if config.is_meta else None,
            "epochs": trainer.epoch,
            "seed": config.seed,
        }
        info: dict[str, Any] = {
            "class_groups": list(task.features.class_groups),
            "class_counts": list(task.features.class_counts),
            "label_correction": bool(getattr(trainer.methodology, "label_correction", False)),
            "training_config": config.model_dump(mode="json"),
        }
        if config.is_meta:
            info["meta_trained_on"] = trained_on
        else:
            info["meta_trained_on"] = _source_info(config)
            info["applied_to"] = trained_on
        trainer.methodology.save(artifact_dir, **info)
        summary["methodology"] = str(artifact_dir)
    from slem.report.plots import write_run_plots

    summary["plots"] = [str(p) for p in write_run_plots(run_dir, trainer, result)]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def _source_info(config: TrainConfig) -> Any:
    from slem.methodology import read_artifact_info

    assert config.methodology is not None
    return read_artifact_info(config.methodology).get("meta_trained_on")
