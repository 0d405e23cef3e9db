"""Plug and play from Python: train on a new task with a saved, frozen methodology.

:func:`apply` is what ``slem apply`` does (the command builds its config with
:func:`apply_config` and writes its run with :func:`slem.train.run.train_run`, as
:func:`apply` does when given ``run_dir``): the model and optimizer settings of the run
that meta-trained the methodology (its ``training_config``), the architecture re-chosen for
the new inputs, no meta set, no tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slem import zoo
from slem.data.config import DataConfig
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology, freeze, load_frozen
from slem.methodology.base import artifact_dir, read_artifact_info
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig, apply_overrides, parse_train_config, set_dotted
from slem.train.record import RunRecord
from slem.train.trainer import Stoppable, make_trainer

Artifact = str | Path | Methodology
Overrides = Mapping[str, Any] | Sequence[str]


def apply_config(
    artifact: Artifact,
    data: DataConfig | Mapping[str, Any] | str | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    overrides: Overrides = (),
) -> TrainConfig:
    """The config of applying ``artifact`` (a directory, a run directory holding one,
    ``zoo:NAME`` for a shipped one, or a methodology in memory) to a new task: the
    meta-training run's ``model`` (architecture ``auto``), ``optim``, ``meta`` and
    ``schedule`` sections (those ``apply`` reads), method ``apply``.

    ``data``: the new task's data section (a dataset name, a mapping or a DataConfig; None
    when the task is given to :func:`apply`); its ``seed`` defaults to ``seed``. ``epochs``:
    training epochs (default: as meta-trained). ``overrides``: dotted keys and values,
    ``{"optim.lr": 0.1}``, or ``["optim.lr=0.1"]`` as ``--set`` takes them.

    Raises:
        SlemError: the artifact is missing or damaged, or a value is invalid (one line).
    """
    if isinstance(artifact, Methodology):
        base: dict[str, Any] = {}
        source = f"(in memory: {artifact.kind})"
    else:
        base = dict(read_artifact_info(artifact).get("training_config") or {})
        # a zoo entry keeps its name: the run's config then works with any installed slem
        source = str(artifact) if zoo.is_zoo(artifact) else str(artifact_dir(artifact))
    values: dict[str, Any] = {
        "method": "apply",
        "methodology": source,
        "data": _data_values(data, seed),
        "model": {**base.get("model", {}), "arch": "auto"},
        "optim": {**base.get("optim", {}), **({"epochs": epochs} if epochs is not None else {})},
        "meta": {**base.get("meta", {}), "objective": "selected"},
        "schedule": base.get("schedule", {}),
        "seed": seed,
    }
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(values, key, value, f"override {key}")
    else:
        values = apply_overrides(values, list(overrides))
    return parse_train_config(values)


def _data_values(data: DataConfig | Mapping[str, Any] | str | None, seed: int) -> Any:
    if data is None:
        return None
    if isinstance(data, str):
        return {"name": data, "seed": seed}
    if isinstance(data, DataConfig):
        return data.model_dump()
    return {"seed": seed, **data}


def apply(
    artifact: Artifact,
    task: Task | None = None,
    *,
    data: DataConfig | Mapping[str, Any] | str | None = None,
    config: TrainConfig | None = None,
    model: nn.Module | None = None,
    epochs: int | None = None,
    seed: int = 0,
    overrides: Overrides = (),
    run_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    on_trainer: Callable[[Stoppable], None] | None = None,
) -> RunRecord:
    """Train on a new task with the frozen methodology ``artifact``: no meta set, no tuning.

    The task is ``task`` (e.g. :meth:`slem.data.Task.from_arrays`) or built from ``data``
    (a dataset name or data section); ``model`` is your own ``nn.Module`` (default: the
    meta-training run's architecture settings, re-chosen for the new inputs). ``config``
    replaces :func:`apply_config` (``epochs``, ``seed`` and ``overrides`` then do nothing).
    With ``run_dir`` the run is written there as ``slem apply`` writes it (config, metrics,
    model, the applied artifact, plots); without it nothing is written.

    Returns:
        The run's :class:`~slem.train.RunRecord` (history, summary, named arrays such as
        the training weights), as ``train_run`` returns it.

    Raises:
        SlemError: neither ``task`` nor ``data``; a missing or damaged artifact; a
            methodology that does not fit the task; an invalid value (one line each).
    """
    if task is None and data is None and (config is None or config.data is None):
        raise SlemError("apply needs the new task: pass task=... or data=... (a dataset name)")
    if config is None:
        config = apply_config(artifact, data, epochs=epochs, seed=seed, overrides=overrides)
    methodology = freeze(artifact) if isinstance(artifact, Methodology) else None
    if run_dir is not None:
        from slem.train.run import train_run

        result, _ = train_run(
            config,
            run_dir,
            progress=progress,
            extra_callbacks=callbacks,
            on_trainer=on_trainer,
            command="slem apply",
            task=task,
            model=model,
            methodology=methodology,
        )
        return result
    from slem.data.task import build_task

    frozen = methodology or load_frozen(str(config.methodology))
    trainer = make_trainer(
        config,
        task if task is not None else build_task(config.data),
        model=model,
        methodology=frozen,
        callbacks=callbacks,
    )
    if on_trainer is not None:
        on_trainer(trainer)
    return trainer.record(trainer.fit(progress=progress))
