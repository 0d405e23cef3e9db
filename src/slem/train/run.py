"""A training run on disk: build the task, train, and write the run directory.

The directory holds ``config.yaml`` (the resolved config plus seed, versions and git
revision), ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` (resumable), the final model
``model.safetensors`` and the model of the epoch validation chose ``model_best.safetensors``
(``summary.json``'s ``weights`` says which is which), ``preprocessing.json`` (how new rows
become inputs: :class:`slem.data.preprocess.Preprocessing`), the ``methodology/`` artifact
when one was learned or applied, and PNG plots in ``plots/`` when a renderer is given
(``render=slem.report.write_run_plots``: the CLI passes it; ``train`` sits below ``report``
and does not import it).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save
from torch import nn

from slem.data.preprocess import PREPROCESSING_FILE, Preprocessing
from slem.data.task import Task, build_task
from slem.errors import SlemError
from slem.methodology import Methodology, freeze, load_frozen
from slem.provenance import provenance
from slem.rundir import LOCK_NAME, atomic_write_bytes, atomic_write_text, lock_run_dir
from slem.train.artifacts import save_methodology
from slem.train.callbacks import (
    Callback,
    CheckpointCallback,
    JsonlLogger,
    ProgressBar,
    check_loggers,
    make_loggers,
)
from slem.train.checkpoint_io import read_yaml_mapping
from slem.train.config import TrainConfig, parse_train_config, without_unread_sections
from slem.train.distributed import Ranks, mark_job, on_main, ranks
from slem.train.learned_optimizer import OPTIMIZER_META_LOSS
from slem.train.methods import check_fits, data_parallel_refusal
from slem.train.models import import_root
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
#: the model at the end of training, and at the epoch validation chose
FINAL_WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "model_best.safetensors"

#: renders a run record into a run directory and returns the files it wrote, e.g.
#: :func:`slem.report.write_run_plots`
Render = Callable[[RunRecord, Path], Sequence[Path]]


def default_run_dir(
    config: TrainConfig, root: str | Path = "runs", task: Task | None = None
) -> Path:
    """``runs/<time>-<method>-<dataset>-s<seed>``; the dataset named by ``config.data``, else
    by ``task``."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = config.data.name if config.data is not None else (task.name if task else "task")
    name = data.replace("/", "_").replace(":", "_")
    return Path(root) / f"{stamp}-{config.method}-{Path(name).name}-s{config.seed}"


def write_config(run_dir: Path, config: TrainConfig) -> None:
    doc = {**config.model_dump(mode="json"), "provenance": provenance()}
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: str | Path, task_given: bool = False) -> TrainConfig:
    """The config a run directory was started with. ``task_given``: the caller gives the
    task again (a run that :func:`train_run` made on a task given in Python has no ``data``
    section).

    Raises:
        SlemError: ``run_dir`` is not a run directory, or its ``config.yaml`` is damaged (or
            has no data section, unless ``task_given``).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise SlemError(f"run directory '{run_dir}' does not exist; nothing to resume")
    if not path.is_file():
        raise SlemError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); nothing to resume")
    fix = "restore it from a copy, or start the run again into a new --out"
    values = read_yaml_mapping(path, fix)
    values.pop("provenance", None)
    if "tasks" in values and "train" in values and "method" not in values:
        raise SlemError(
            f"'{run_dir}' is a slem meta-train run; continue it with: slem meta-train "
            f"--resume {run_dir}"
        )
    if "learner" in values and "method" not in values:
        raise SlemError(
            f"'{run_dir}' is a slem fewshot run; continue it with: slem fewshot train "
            f"--resume {run_dir} (evaluate it with slem fewshot eval {run_dir})"
        )
    if "search" in values and "darts" in values and "method" not in values:
        raise SlemError(
            f"'{run_dir}' is a slem nas search run; continue it with: slem nas search "
            f"--resume {run_dir} (train its cell with: slem train {run_dir}/train.yaml)"
        )
    if values.get("data", "") is None and not task_given:  # train_run(..., task=...) wrote it
        raise SlemError(
            f"{path} is from a run on a task given in Python (data: null): continue it there "
            "with train_run(read_run_config(run_dir, task_given=True), run_dir, resume=True, "
            "task=...)"
        )
    try:  # a section its method never read (written before such sections were refused)
        config = parse_train_config(without_unread_sections(values))
    except SlemError as exc:
        raise SlemError(f"{path} is damaged or from another slem version ({exc}); {fix}") from None
    if config.data is None and not task_given:
        raise SlemError(f"{path} is damaged (it has no data section); {fix}")
    return config


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
    """Method apply: the artifact ``config.methodology`` names, frozen; else None."""
    if not config.spec.frozen_artifact:
        return None
    assert config.methodology is not None
    return load_frozen(config.methodology)


def train_run(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    on_trainer: Callable[[Stoppable], None] | None = None,
    command: str = "slem train",
    render: Render | None = None,
    task: Task | None = None,
    model: nn.Module | None = None,
    methodology: Methodology | None = None,
    data_parallel: bool | None = None,
) -> tuple[RunRecord, Path]:
    """Train ``config`` into ``run_dir`` (continuing from its checkpoint with ``resume``): the
    one run writer of ``slem train``, ``slem apply``, :func:`slem.train.apply` and API users.

    ``task``: the task to train on (default: built from ``config.data``); ``model``: your
    own ``nn.Module`` (default: built from ``config.model``); ``methodology``: the frozen
    methodology of method apply (default: loaded from ``config.methodology``). Resuming
    needs the same task and model again.

    Returns the run's :class:`~slem.train.record.RunRecord` (its ``summary`` as written to
    ``summary.json``) and ``run_dir``. Plots are written by ``render`` (e.g.
    ``render=slem.report.write_run_plots``; their paths go to the summary's ``plots``), or
    afterwards with ``slem.report.write_run_plots(record, run_dir)``.

    Everything that can be checked is checked before the first byte is written: the device,
    the methodology artifact (method apply), the data. The directory is then locked for this
    process while it is written (:func:`slem.rundir.lock_run_dir`).

    ``data_parallel`` (default: when this process is one of several ranks of a process group,
    e.g. under ``torchrun``): every rank calls this and trains the one task data-parallel
    (:meth:`~slem.train.Trainer.use_ranks`); rank 0 locks the directory and writes every file
    (the checkpoint holds every rank's state), the other ranks write nothing, and every rank
    returns the record. ``False``: each process trains alone.

    Raises:
        SlemError: a bad config, device, artifact or dataset (no ``data`` section and no
            ``task``); ``run_dir`` cannot be created, already holds a run (without
            ``resume``), or is being written by another process.
    """
    run_dir = Path(run_dir)
    set_threads(config.threads)
    resolve_device(config.device)
    check_loggers(config.loggers)
    r = ranks() if data_parallel is not False else Ranks()
    refusal = data_parallel_refusal(config) if r.active else None
    if refusal is not None:
        raise SlemError(refusal)
    if methodology is None:
        methodology = load_frozen_methodology(config)
    if task is None:
        task = build_task(config.data)
    check_fits(config, task, methodology)  # nothing is written for a method that cannot run
    created = not run_dir.exists()
    try:
        with ExitStack() as held:

            def open_run_dir() -> None:  # rank 0 (its error is every rank's)
                held.enter_context(lock_run_dir(run_dir, command))
                if not resume:
                    check_new_run_dir(run_dir, command)
                    write_config(run_dir, config)
                    mark_job(run_dir)

            if r.active:
                on_main(open_run_dir)
            else:
                open_run_dir()
            try:
                return _train_into(
                    config,
                    run_dir,
                    resume,
                    progress,
                    extra_callbacks,
                    on_trainer,
                    render,
                    task,
                    model,
                    methodology,
                    r,
                )
            except SlemError:
                if not resume and r.main:  # refused before training wrote anything
                    _discard(run_dir, {CONFIG_FILE, LOCK_NAME}, (CONFIG_FILE,))
                raise
    except SlemError:
        if created and r.main:  # and nothing but the lock is left in it
            _discard(run_dir, {LOCK_NAME}, (LOCK_NAME, "."))
        raise


def _discard(run_dir: Path, only: set[str], remove: tuple[str, ...]) -> None:
    """Remove ``remove`` (``"."``: the directory itself) from ``run_dir`` when it holds
    nothing but ``only``."""
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= only:
        return
    for name in remove:
        if name == ".":
            run_dir.rmdir()
        else:
            (run_dir / name).unlink(missing_ok=True)


def _train_into(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    extra_callbacks: Sequence[Callback],
    on_trainer: Callable[[Stoppable], None] | None,
    render: Render | None,
    task: Task,
    model: nn.Module | None,
    methodology: Methodology | None,
    r: Ranks = Ranks(),
) -> tuple[RunRecord, Path]:
    """The run itself, in the locked ``run_dir`` (see :func:`train_run`); on several ranks
    ``r``, rank 0 logs, shows progress and writes the outputs (every rank checkpoints: a
    collective whose file rank 0 writes)."""
    callbacks: list[Callback] = [  # loggers first: a checkpoint never outruns what they wrote
        *(make_loggers(config.loggers, run_dir, config.checkpoint_every) if r.main else []),
        CheckpointCallback(run_dir / CHECKPOINT_FILE, config.checkpoint_every),
        *([JsonlLogger(run_dir / "metrics.jsonl")] if r.main else []),
        *extra_callbacks,
    ]
    if progress and r.main:
        callbacks.append(ProgressBar(f"{config.method} {task.name}"))
    meta_train = config.spec.meta_train
    if meta_train is not None:  # a first phase: meta-train the methodology, save it
        methodology = meta_train(config, run_dir, resume, progress, on_trainer)
    trainer = make_trainer(config, task, model=model, methodology=methodology, callbacks=callbacks)
    trainer.use_ranks(r)
    # a run stopped before its first checkpoint resumes from the beginning
    if resume and on_main((run_dir / CHECKPOINT_FILE).exists):  # rank 0 reads it
        trainer.load_checkpoint(run_dir / CHECKPOINT_FILE)
    if on_trainer is not None:
        on_trainer(trainer)
    record = trainer.record(trainer.fit(progress=False))
    meta_history = read_jsonl(run_dir / META_METRICS_FILE)  # a meta-training phase
    if meta_history:  # the one such phase: the learned optimizer's
        record.arrays.update(meta_loss_array(meta_history))
        record.info.update(
            meta_loss_label=OPTIMIZER_META_LOSS, meta_title="meta-training the learned optimizer"
        )
    if r.active:
        record.summary["ranks"] = r.size
    if r.main:
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
    summary = record.summary
    summary["model"] = {
        "arch": config.model.arch,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "import_root": import_root(config.model.arch),
    }
    summary["weights"] = save_weights(run_dir, trainer)
    center, scale = trainer.objective.target_scaling()
    preprocessing = Preprocessing.of(task).with_target_scaling(center, scale)
    atomic_write_text(run_dir / PREPROCESSING_FILE, preprocessing.to_text())
    summary["preprocessing"] = PREPROCESSING_FILE
    if config.spec.meta_train is not None:  # its artifact was written after meta-training
        summary["methodology"] = str(run_dir / "methodology")
    elif trainer.methodology is not None:
        artifact_dir = run_dir / "methodology"
        trained_on = {
            "meta_objective": config.meta.objective if config.is_meta else None,
            "epochs": trainer.progress.epoch,
            "seed": config.seed,
        }
        save_methodology(
            trainer.methodology,
            artifact_dir,
            config,
            task,
            trained_on=trained_on,
            applied=not config.is_meta,
            applied_from=None if config.is_meta else _source_info(config),
        )
        summary["methodology"] = str(artifact_dir)
    summary["plots"] = [str(p) for p in render(record, run_dir)] if render is not None else []
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))


def save_weights(run_dir: Path, trainer: Trainer) -> dict[str, Any]:
    """Write the final model (:data:`FINAL_WEIGHTS`) and, when validation chose an epoch, that
    epoch's model (:data:`BEST_WEIGHTS`); returns the summary's ``weights`` entry: each
    file with its epoch, and ``chosen`` (``best`` or ``final``), the one ``slem predict``
    uses unless told otherwise."""

    def write(name: str, state: dict[str, Any]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write_bytes(run_dir / name, save(tensors))

    progress = trainer.progress
    write(FINAL_WEIGHTS, trainer.model.state_dict())
    entry: dict[str, Any] = {"final": {"file": FINAL_WEIGHTS, "epoch": progress.epoch}}
    best = progress.best
    if best.get("state") is not None:
        write(BEST_WEIGHTS, best["state"])
        entry["best"] = {
            "file": BEST_WEIGHTS,
            "epoch": best["epoch"],
            "val_score": best["val_score"],
        }
    else:
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    entry["chosen"] = "best" if "best" in entry else "final"
    return entry


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
        return load_frozen(artifact)
    cfg = config.learned_optimizer
    checkpoint = run_dir / META_CHECKPOINT_FILE
    saver = CheckpointCallback(checkpoint, cfg.checkpoint_every)
    meta = OptimizerMetaTrainer(cfg, config.seed, resolve_device(config.device), callbacks=[saver])
    if resume and checkpoint.is_file():
        meta.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(meta)
    meta.fit(progress)
    net = meta.net
    atomic_write_text(
        run_dir / META_METRICS_FILE, "".join(json.dumps(row) + "\n" for row in meta.history)
    )
    save_methodology(
        net,
        artifact,
        config,
        trained_on={
            "population": [o.name for o in meta.population],
            "iterations": meta.iteration,
            "unroll": cfg.unroll,
            "horizon": cfg.horizon,
            "seed": config.seed,
        },
    )
    return freeze(net)


def _source_info(config: TrainConfig) -> Any:
    """The applied artifact's ``meta_trained_on`` (None for a methodology given in memory)."""
    from slem.methodology import read_artifact_info
    from slem.methodology.base import artifact_dir

    if config.methodology is None or not artifact_dir(config.methodology).exists():
        return None
    return read_artifact_info(config.methodology).get("meta_trained_on")
