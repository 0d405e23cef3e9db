"""``slem nas search CONFIG``: architecture search of a cell, by DARTS or black-box search.

One config (:class:`NasConfig`) names the task (``data``), the cell space (``space``), the
skeleton around the cells (``network``) and how a cell is trained (``train``: sections of a
``slem train`` config, e.g. ``optim``), then one of two searches (:data:`SEARCHES`):

- ``darts``: the weight-sharing supernet and its architecture parameters, learned by the bilevel
  engine (:class:`~slem.train.nas.DartsSearch`); cost about that of a few trainings.
- ``blackbox``: one training per architecture (``slem train`` of ``model.arch: cell``) or one
  lookup in a tabular benchmark (``blackbox.table``: NAS-Bench-201), proposed by regularized
  evolution, TPE, GP, NSGA-II or random search (:func:`~slem.automl.nas.blackbox_search`); one
  objective (validation accuracy) or several (accuracy against parameters, latency, ...).

Both write into the run directory ``summary.json`` and the plots, and the chosen cell
(``architecture.json``) with a ``train.yaml`` that trains it from scratch (``slem train
RUN/train.yaml``); a search of a table names its best cell in the table's own terms in the
summary instead.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from slem.automl.nas import NB201_DATASETS, blackbox_search, hypervolume, nasbench201_table
from slem.data.config import DataConfig
from slem.data.task import Task, build_task
from slem.errors import SlemError, validation_message
from slem.methodology.architecture import Genotype
from slem.rundir import atomic_write_text, make_run_dir
from slem.train import make_trainer, parse_train_config
from slem.train.artifacts import save_methodology
from slem.train.callbacks import CheckpointCallback
from slem.train.config_methods import _Strict
from slem.train.guard import TrainingStopped
from slem.train.nas import (
    DartsConfig,
    DartsSearch,
    NetworkConfig,
    SpaceConfig,
    as_inputs,
    darts_summary,
    split_for_search,
)
from slem.train.record import RunRecord
from slem.train.run import check_new_run_dir

Objective = Literal["accuracy", "params", "latency", "train_time"]
#: the black-box search's study (SQLite) in the run directory: what --resume continues
STUDY_FILE = "study.db"
#: black-box objectives: name -> direction; ``accuracy`` is the validation accuracy (%)
OBJECTIVES: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "params": "minimize",
    "latency": "minimize",
    "train_time": "minimize",
}
#: what each objective is called in a NAS-Bench-201 table's evaluation
_TABLE_METRICS = {
    "accuracy": "val_accuracy",
    "params": "model_size",
    "latency": "latency",
    "train_time": "train_time",
}


class BlackboxConfig(_Strict):
    """Black-box search over the cells (``search: blackbox``)."""

    sampler: Literal["evolution", "random", "tpe", "gp", "nsga2"] = Field(
        "evolution",
        description="evolution: regularized evolution (Real et al. 2019); tpe (MOTPE with "
        "several objectives); gp (one objective); nsga2 (several objectives)",
    )
    trials: int = Field(30, ge=1, description="architectures evaluated (in all)")
    objectives: list[Objective] = Field(
        default_factory=lambda: list[Objective](["accuracy"]),
        description="accuracy (validation, maximized) alone, or with params / latency / "
        "train_time (minimized) for a Pareto front; latency and train_time need a table",
    )
    table: str | None = Field(
        None,
        description="a tabular benchmark instead of training: nasbench201/cifar10-valid, "
        "nasbench201/cifar100 or nasbench201/imagenet16-120 (pip install 'slem[bench]')",
    )
    population_size: int | None = Field(None, ge=2, description="evolution: the population")
    sample_size: int | None = Field(None, ge=1, description="evolution: the tournament")

    @model_validator(mode="after")
    def _valid(self) -> BlackboxConfig:
        if len(set(self.objectives)) != len(self.objectives) or "accuracy" not in self.objectives:
            raise ValueError(
                f"blackbox.objectives must name accuracy once, plus any of params, latency, "
                f"train_time; got {self.objectives}"
            )
        if self.table is not None:
            family, _, dataset = self.table.partition("/")
            if family != "nasbench201" or dataset not in NB201_DATASETS:
                known = ", ".join(f"nasbench201/{d}" for d in NB201_DATASETS)
                raise ValueError(f"blackbox.table {self.table!r} is unknown; use one of {known}")
        else:
            timed = [o for o in self.objectives if o in ("latency", "train_time")]
            if timed:
                raise ValueError(
                    f"blackbox.objectives {timed} are read from a table (blackbox.table); "
                    "a trained cell reports accuracy and params"
                )
        return self


class NasConfig(_Strict):
    """The config of ``slem nas search`` (see the module docstring)."""

    search: Literal["darts", "blackbox"] = Field(
        "darts", description="darts (weight sharing, bilevel) or blackbox (one run per cell)"
    )
    data: DataConfig | None = Field(None, description="the task (not with blackbox.table)")
    space: SpaceConfig = SpaceConfig()
    network: NetworkConfig = NetworkConfig()
    train: dict[str, Any] = Field(
        default_factory=lambda: {"optim": {"nesterov": True}},
        description="sections of a slem train config (optim, ...) for training a cell: each "
        "black-box trial, and the train.yaml written for the chosen cell",
    )
    darts: DartsConfig = DartsConfig()
    blackbox: BlackboxConfig = BlackboxConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(
        1, ge=1, description="darts: write the checkpoint every this many epochs"
    )

    @model_validator(mode="after")
    def _consistent(self) -> NasConfig:
        table = self.search == "blackbox" and self.blackbox.table is not None
        if self.data is None and not table:
            raise ValueError("data is missing: name the task (e.g. data: {name: mnist1d})")
        if self.data is not None and table:
            raise ValueError("blackbox.table is the task itself; leave data out")
        if self.network.channels % self.darts.partial_channels:
            raise ValueError(
                f"darts.partial_channels ({self.darts.partial_channels}) must divide "
                f"network.channels ({self.network.channels})"
            )
        reserved = {"data", "model", "seed", "device", "method"} & set(self.train)
        if reserved:
            raise ValueError(
                f"train sets {sorted(reserved)}, which slem nas search sets itself; give "
                "data, network and seed at the top level"
            )
        return self


def parse_nas_config(values: dict[str, Any]) -> NasConfig:
    """A :class:`NasConfig` from YAML values; the ``train`` sections are checked by building
    the ``slem train`` config of a cell.

    Raises:
        SlemError: one line naming the bad key and what it takes.
    """
    try:
        cfg = NasConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc, "nas config")) from None
    if cfg.data is not None:
        first = next(g for g in cfg.space.space().genotypes() if g.connected)
        try:
            parse_train_config(train_values(cfg, str(first)))
        except SlemError as exc:
            raise SlemError(f"nas config, train: {exc}") from None
    return cfg


_TASKS: dict[str, Task] = {}


def search_task(cfg: NasConfig) -> Task:
    """The task of ``cfg.data``, built once per data config in this process (the check before
    a run and the run share it)."""
    assert cfg.data is not None
    key = cfg.data.model_dump_json()
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = build_task(cfg.data)
    return _TASKS[key]


def check_search(cfg: NasConfig) -> None:
    """Everything a search needs of its task, checked before anything is written: a
    classification task with signals ``(channels, length)`` or images ``(channels, h, w)``.
    A table search (``blackbox.table``) needs only the optional package.

    Raises:
        SlemError: the task cannot be built, is not a classification, or its inputs are not
            signals or images (one line each, with the fix).
    """
    if cfg.data is None:
        assert cfg.blackbox.table is not None
        nasbench201_table(cfg.blackbox.table.partition("/")[2])  # the package is installed
        return
    task = search_task(cfg)
    if not task.is_classification:
        raise SlemError(
            f"architecture search needs a classification task; {task.name} is a "
            f"{task.task_type} task (set data.task_type, or search another dataset)"
        )
    shape = tuple(task.features.input_shape)
    if len(shape) not in (2, 3):
        raise SlemError(
            f"a cell network reads signals (channels, length) or images (channels, h, w); "
            f"{task.name}'s inputs are {shape}: search a signal or image dataset (e.g. mnist1d, "
            "digits-images, fashion-mnist)"
        )


def train_values(cfg: NasConfig, genotype: str) -> dict[str, Any]:
    """The ``slem train`` config values that train ``genotype`` (a path or string) from scratch
    on ``cfg``'s task with ``cfg.train``'s recipe."""
    assert cfg.data is not None
    model = {
        "arch": "cell",
        "genotype": genotype,
        "width": cfg.network.channels,
        "cells": cfg.network.cells,
        "stages": cfg.network.stages,
    }
    return {
        **cfg.train,
        "method": "erm",
        "data": cfg.data.model_dump(mode="json", exclude_defaults=True),
        "model": model,
        "seed": cfg.seed,
        "device": cfg.device,
    }


def _write_train_yaml(cfg: NasConfig, run_dir: Path, architecture: Path) -> Path:
    path = run_dir / "train.yaml"
    values = train_values(cfg, str(architecture.resolve()))
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
    return path


def _finish(
    record: RunRecord, run_dir: Path, render: Callable[[RunRecord, Path], Sequence[Path]] | None
) -> RunRecord:
    if render is not None:
        record.summary["plots"] = [str(p) for p in render(record, run_dir)]
    atomic_write_text(run_dir / "summary.json", json.dumps(record.summary, indent=2))
    return record


def darts_run(
    cfg: NasConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
    render: Callable[[RunRecord, Path], Sequence[Path]] | None = None,
) -> RunRecord:
    """DARTS into ``run_dir`` (resumable from ``meta_checkpoint.pt``); writes
    ``architecture.json``, the mixing weights (``methodology/``), ``search.jsonl``,
    ``train.yaml``, the plots and ``summary.json``."""
    task = search_task(cfg)
    weights_half, arch_half = split_for_search(task, cfg.seed)
    checkpoint = run_dir / "meta_checkpoint.pt"
    search = DartsSearch(
        cfg.darts,
        cfg.space.space(),
        cfg.network,
        [weights_half, arch_half, as_inputs(task, "val")],
        task.n_classes,
        seed=cfg.seed,
        device=cfg.device,
    )
    # checkpoint_every counts epochs; the callback counts iterations
    every = cfg.checkpoint_every * search.plan.per_epoch
    search.callbacks.append(CheckpointCallback(checkpoint, every))
    if resume and checkpoint.is_file():
        search.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(search)
    search.fit(progress)
    summary = darts_summary(search)
    genotype = search.mixing.genotype()
    architecture = genotype.save(run_dir, found_by="darts", task=task.name)
    save_methodology(
        search.mixing,
        run_dir / "methodology",
        cfg,
        task,
        trained_on={"task": task.name, "search": "darts", "iterations": search.iteration},
    )
    atomic_write_text(
        run_dir / "search.jsonl", "".join(json.dumps(r) + "\n" for r in search.history)
    )
    summary["train_config"] = str(_write_train_yaml(cfg, run_dir, architecture))
    summary["architecture"] = str(architecture)
    arrays = {
        "mixing_weights": search.weight_history(),
        "mixing_epochs": np.arange(1, len(search.weight_history()) + 1),
    }
    info = {
        "search": "darts",
        "edges": cfg.space.space().edge_names,
        "operations": list(cfg.space.operations),
        "title": f"DARTS ({cfg.darts.order} order"
        + (", auxiliary skip" if cfg.darts.safeguard == "aux_skip" else "")
        + (
            f", partial channels 1/{cfg.darts.partial_channels}"
            if cfg.darts.partial_channels > 1
            else ""
        )
        + f") on {task.name}",
    }
    return _finish(RunRecord(list(search.history), summary, arrays, info), run_dir, render)


class _TrainedCells:
    """A black-box objective that trains each cell with ``slem train`` (one task, built once)
    and reports its validation accuracy (%), parameters and, never used for selection, the
    test accuracy."""

    def __init__(self, cfg: NasConfig, task: Task) -> None:
        self.cfg, self.task = cfg, task

    def __call__(self, choices: dict[str, Any]) -> dict[str, float]:
        genotype = self.cfg.space.space().genotype(choices)
        if not genotype.connected:  # a failed trial, replaced: no training can learn it
            raise ValueError(f"cell {genotype} outputs zeros (no path of operations)")
        config = parse_train_config(train_values(self.cfg, str(genotype)))
        trainer = make_trainer(config, self.task)
        result = trainer.fit(progress=False)
        s = result.summary  # accuracies as fractions: reported in percent, as the tables
        test = s.get("test_accuracy")
        return {
            "accuracy": 100.0 * float(s["val_accuracy"]),
            "params": float(sum(p.numel() for p in trainer.model.parameters())),
            "test_accuracy": math.nan if test is None else 100.0 * float(test),
        }


def blackbox_run(
    cfg: NasConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
    render: Callable[[RunRecord, Path], Sequence[Path]] | None = None,
) -> RunRecord:
    """Black-box search into ``run_dir``: the study in ``study.db`` (so a rerun with
    ``--resume`` continues it), ``trials.jsonl``, the best cell on validation accuracy
    (``architecture.json``; with several objectives also ``pareto.json``, the front, and its
    hypervolume), ``train.yaml`` (trained cells only), the plots and ``summary.json``."""
    bb = cfg.blackbox
    names = list(bb.objectives)
    objectives = [(n, OBJECTIVES[n]) for n in names]
    if bb.table is not None:
        space, table_eval, optimum = nasbench201_table(bb.table.partition("/")[2])

        def evaluate(choices: dict[str, Any]) -> dict[str, float]:
            row = table_eval(choices)
            return {n: row[_TABLE_METRICS[n]] for n in OBJECTIVES}

        task_name = bb.table
    else:
        task = search_task(cfg)
        cell_space = cfg.space.space()
        space = {n: list(cell_space.operations) for n in cell_space.edge_names}
        evaluate = _TrainedCells(cfg, task)
        optimum = None
        task_name = task.name
    options = {
        k: v
        for k, v in {"population_size": bb.population_size, "sample_size": bb.sample_size}.items()
        if v is not None
    }
    callbacks = [_ProgressLine(names, bb.trials)] if progress else []
    try:
        study = blackbox_search(
            space,
            evaluate,
            objectives,
            sampler=bb.sampler,
            trials=bb.trials,
            seed=cfg.seed,
            storage=f"sqlite:///{(run_dir / STUDY_FILE).resolve()}",
            study_name="slem-nas",
            callbacks=callbacks,
            sampler_options=options or None,
        )
    except KeyboardInterrupt:  # the finished trials are in the study: --resume goes on
        raise TrainingStopped("interrupted") from None
    done = [t for t in study.trials if t.values is not None and t.state.name == "COMPLETE"]
    rows = [
        {
            "trial": t.number,
            "genotype": _genotype_text(cfg, t.params),
            **t.params,
            **{n: t.values[i] for i, n in enumerate(names)},
        }
        for t in done
    ]
    atomic_write_text(run_dir / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    front_set = {t.number for t in study.best_trials} if len(names) > 1 else set()
    # the most accurate; among equals, one on the Pareto front, then the earliest
    best = max(done, key=lambda t: (t.values[0], t.number in front_set, -t.number))
    summary: dict[str, Any] = {
        "search": "blackbox",
        "sampler": bb.sampler,
        "task": task_name,
        "trials": len(done),
        "best_accuracy": round(best.values[0], 4),
        "best_trial": best.number,
    }
    if optimum is not None:
        summary["table_optimum"] = round(optimum, 4)
        summary["regret"] = round(optimum - best.values[0], 4)
    values = np.array([t.values for t in done], dtype=np.float64)
    arrays: dict[str, np.ndarray] = {"objective_values": values}
    if len(names) > 1:
        directions = [OBJECTIVES[n] for n in names]
        reference = _reference(values, directions)
        front = sorted({t.number for t in study.best_trials})
        summary["pareto_trials"] = front
        summary["hypervolume"] = hypervolume(values, reference, directions)
        summary["hypervolume_reference"] = reference.tolist()
        atomic_write_text(
            run_dir / "pareto.json",
            json.dumps([r for r in rows if r["trial"] in front], indent=2),
        )
        arrays["pareto_mask"] = np.array([t.number in front for t in done])
    if bb.table is None:
        genotype = cfg.space.space().genotype(best.params)
        architecture = genotype.save(
            run_dir, found_by=f"blackbox/{bb.sampler}", val_accuracy=best.values[0]
        )
        summary["genotype"] = str(genotype)
        summary["architecture"] = str(architecture)
        summary["test_accuracy_of_best"] = best.user_attrs.get("test_accuracy")
        summary["train_config"] = str(_write_train_yaml(cfg, run_dir, architecture))
    else:
        summary["cell"] = dict(best.params)
        summary["genotype"] = _genotype_text(cfg, best.params)
    info = {"search": "blackbox", "objectives": names, "title": f"{bb.sampler} on {task_name}"}
    return _finish(RunRecord(rows, summary, arrays, info), run_dir, render)


def _genotype_text(cfg: NasConfig, params: dict[str, Any]) -> str:
    """A trial's cell as NAS-Bench-201's string: in slem's operations for a trained cell; in
    the table's own (``nor_conv_3x3``, ...) for a table, whose ``Op0`` .. ``Op5`` are the edges
    in that string's order, ``(0,1), (0,2), (1,2), (0,3), (1,3), (2,3)``."""
    if cfg.blackbox.table is None:
        return str(cfg.space.space().genotype(params))
    ops = [str(params[f"Op{k}"]) for k in range(6)]
    return f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"


class _ProgressLine:
    """A black-box search's progress: one line per finished trial on stderr (its objectives,
    the best accuracy so far)."""

    def __init__(self, names: Sequence[str], total: int) -> None:
        self.names, self.total = list(names), total
        self.best = -math.inf

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.values is None:
            return
        values = dict(zip(self.names, trial.values, strict=True))
        self.best = max(self.best, values["accuracy"])
        shown = ", ".join(f"{n} {v:.4g}" for n, v in values.items())
        done = sum(t.values is not None for t in study.get_trials(deepcopy=False))
        print(
            f"trial {trial.number}: {shown} (best accuracy {self.best:.2f}; {done}/{self.total})",
            file=sys.stderr,
            flush=True,
        )


def _reference(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """The hypervolume's reference point: 0 for a maximized objective (accuracy in percent),
    1.1 times the worst value among the trials for a minimized one (parameters, latency), so
    every trial adds volume and the hypervolume compares fronts of one task; the benchmark
    fixes one point per table instead."""
    return np.array(
        [
            0.0 if d == "maximize" else 1.1 * float(values[:, i].max())
            for i, d in enumerate(directions)
        ]
    )


#: ``search`` -> its run function ``(cfg, run_dir, resume, progress, on_trainer, render)``
SEARCHES: dict[str, Callable[..., RunRecord]] = {"darts": darts_run, "blackbox": blackbox_run}


def nas_run(
    cfg: NasConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
    render: Callable[[RunRecord, Path], Sequence[Path]] | None = None,
) -> RunRecord:
    """``slem nas search``: the run function of ``cfg.search`` (:data:`SEARCHES`) into
    ``run_dir`` (a path; a new one is created with its ``config.yaml`` after
    :func:`check_search`, as the CLI does; an existing run is refused unless ``resume``).

    Raises:
        SlemError: the task does not suit a search, or ``run_dir`` already holds a run.
    """
    run_dir = Path(run_dir)
    if not resume and not (run_dir / "config.yaml").is_file():  # the CLI writes it first
        check_search(cfg)
        check_new_run_dir(run_dir, "nas_run")
        make_run_dir(run_dir)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
    return SEARCHES[cfg.search](cfg, run_dir, resume, progress, on_trainer, render)


def load_architecture(run_dir: str | Path) -> Genotype:
    """The cell a search wrote (``RUN/architecture.json``)."""
    return Genotype.load(run_dir)
