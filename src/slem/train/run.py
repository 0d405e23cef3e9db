"""A training run on disk: build the task, train, and write the run directory.

The directory holds ``config.yaml`` (the resolved config plus seed, versions and git
revision), ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` (resumable) and
``model.safetensors``, the ``methodology/`` artifact when one was learned or applied, and
PNG plots in ``plots/`` when a renderer is given (``render=slem.report.write_run_plots``: the
CLI passes it; ``train`` sits below ``report`` and does not import it).
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
from safetensors.torch import save

from slem._version import __version__
from slem.data.task import Task, build_task
from slem.errors import SlemError
from slem.methodology import Methodology, load_methodology
from slem.rundir import atomic_write_bytes, atomic_write_text, lock_run_dir
from slem.train.callbacks import Callback, CheckpointCallback, JsonlLogger, ProgressBar
from slem.train.checkpoint_io import read_yaml_mapping
from slem.train.config import TrainConfig, parse_train_config
from slem.train.record import RunRecord, meta_loss_array, read_jsonl
from slem.train.threads import set_threads
from slem.train.trainer import Stoppable, Trainer, make_trainer, resolve_device

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
META_CHECKPOINT_FILE = "meta_checkpoint.pt"
SUMMARY_FILE = "summary.json"
#: files whose presence means a directory already holds a run
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, META_CHECKPOINT_FILE, SUMMARY_FILE)
META_METRICS_FILE = "meta_metrics.jsonl"

#: renders a run record into a run directory and returns the files it wrote, e.g.
#: :func:`slem.report.write_run_plots`
Render = Callable[[RunRecord, Path], Sequence[Path]]


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
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run directory was started with.

    Raises:
        SlemError: ``run_dir`` is not a run directory, or its ``config.yaml`` is damaged.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise SlemError(f"run directory '{run_dir}' does not exist; nothing to resume")
    if not path.is_file():
        raise SlemError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); nothing to resume")
    fix = "restore it from a copy, or start the run again into a new --out"
    values = read_yaml_mapping(path, fix)
    values.pop("provenance", None)
    try:
        return parse_train_config(values)
    except SlemError as exc:
        raise SlemError(f"{path} is damaged or from another slem version ({exc}); {fix}") from None


def check_new_run_dir(run_dir: Path, command: str = "slem train") -> None:
    """A new run may not write into a directory that already holds one.

    Raises:
        SlemError: ``run_dir`` holds a run's files (config, checkpoint or summary).
    """
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found:
        raise SlemError(
            f"'{run_dir}' already holds a run ({', '.join(found)}); continue it with "
            f"'{command} --resume {run_dir}' or choose another --out"
        )


def load_frozen_methodology(config: TrainConfig) -> Methodology | None:
    if config.method != "apply":
        return None
    assert config.methodology is not None
    return _frozen(load_methodology(config.methodology)[0])


def train_run(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    on_trainer: Callable[[Stoppable], None] | None = None,
    command: str = "slem train",
    render: Render | None = None,
) -> tuple[RunRecord, Path]:
    """Train ``config`` into ``run_dir`` (continuing from its checkpoint with ``resume``).

    Returns the run's :class:`~slem.train.record.RunRecord` (its ``summary`` as written to
    ``summary.json``) and ``run_dir``. Plots are written by ``render`` (e.g.
    ``render=slem.report.write_run_plots``; their paths go to the summary's ``plots``), or
    afterwards with ``slem.report.write_run_plots(record, run_dir)``.

    Everything that can be checked is checked before the first byte is written: the device,
    the methodology artifact (method apply), the data. The directory is then locked for this
    process while it is written (:func:`slem.rundir.lock_run_dir`).

    Raises:
        SlemError: a bad config, device, artifact or dataset; ``run_dir`` cannot be created,
            already holds a run (without ``resume``), or is being written by another process.
    """
    run_dir = Path(run_dir)
    set_threads(config.threads)
    resolve_device(config.device)
    methodology = load_frozen_methodology(config)
    task = build_task(config.data)
    with lock_run_dir(run_dir, command):
        if not resume:
            check_new_run_dir(run_dir, command)
            write_config(run_dir, config)
        callbacks: list[Callback] = [
            CheckpointCallback(run_dir / CHECKPOINT_FILE, config.checkpoint_every),
            JsonlLogger(run_dir / "metrics.jsonl"),
            *extra_callbacks,
        ]
        if progress:
            callbacks.append(ProgressBar(f"{config.method} {task.name}"))
        if config.method == "learned_optimizer":
            methodology = meta_train_optimizer(config, run_dir, resume, progress, on_trainer)
        trainer = make_trainer(config, task, methodology=methodology, callbacks=callbacks)
        # a run stopped before its first checkpoint resumes from the beginning
        if resume and (run_dir / CHECKPOINT_FILE).exists():
            trainer.load_checkpoint(run_dir / CHECKPOINT_FILE)
        if on_trainer is not None:
            on_trainer(trainer)
        record = trainer.record(trainer.fit())
        meta_history = read_jsonl(run_dir / META_METRICS_FILE)  # a meta-training phase
        if meta_history:
            record.arrays.update(meta_loss_array(meta_history))
        write_outputs(run_dir, config, task, trainer, record, render)
    return record, run_dir


def write_outputs(
    run_dir: Path,
    config: TrainConfig,
    task: Task,
    trainer: Trainer,
    record: RunRecord,
    render: Render | None = None,
) -> None:
    """The model, the methodology artifact, the plots (by ``render``) and ``summary.json``,
    whose contents ``record.summary`` then holds."""
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    atomic_write_bytes(run_dir / "model.safetensors", save(weights))
    summary = record.summary
    if config.method == "learned_optimizer":  # its artifact was written after meta-training
        summary["methodology"] = str(run_dir / "methodology")
    elif trainer.methodology is not None:
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
    summary["plots"] = [str(p) for p in render(record, run_dir)] if render is not None else []
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))


def meta_train_optimizer(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    on_trainer: Callable[[Stoppable], None] | None,
) -> Methodology:
    """Phase one of method learned_optimizer: meta-train the LSTM optimizer on its population
    (checkpointed in ``meta_checkpoint.pt``, resumable), save the artifact, return it frozen."""
    from slem.train.learned_optimizer import OptimizerMetaTrainer

    artifact = run_dir / "methodology"
    if resume and (artifact / "methodology.json").is_file():
        return _frozen(load_methodology(artifact)[0])
    cfg = config.learned_optimizer
    meta = OptimizerMetaTrainer(cfg, config.seed, resolve_device(config.device))
    checkpoint = run_dir / META_CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        meta.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(meta)
    meta.fit(checkpoint, progress="meta-training the optimizer" if progress else None)
    net = meta.net
    atomic_write_text(
        run_dir / META_METRICS_FILE, "".join(json.dumps(row) + "\n" for row in meta.history)
    )
    net.save(
        artifact,
        training_config=config.model_dump(mode="json"),
        meta_trained_on={
            "population": [o.name for o in meta.population],
            "iterations": meta.iteration,
            "unroll": cfg.unroll,
            "horizon": cfg.horizon,
            "seed": config.seed,
        },
    )
    return _frozen(net)


def _frozen(methodology: Methodology) -> Methodology:
    for p in methodology.parameters():
        p.requires_grad_(False)
    return methodology


def _source_info(config: TrainConfig) -> Any:
    from slem.methodology import read_artifact_info

    assert config.methodology is not None
    return read_artifact_info(config.methodology).get("meta_trained_on")
