"""The one writer of methodology artifacts' metadata.

Every artifact slem writes (``slem train``, ``slem apply``, the learned optimizers, the
benchmarks) goes through :func:`save_methodology`, so each carries the same fields:

- ``training_config``: the config of the run that produced it (``slem apply`` and
  :func:`slem.train.apply` take the model and optimizer settings from it);
- ``meta_trained_on``: what it was meta-trained on (dataset, noise, imbalance, and what the
  caller adds: epochs, seed, population, ...); for a methodology that was *applied*, not
  learned, the source artifact's ``meta_trained_on``, and the new task under ``applied_to``;
- ``class_groups``, ``class_counts``, ``label_correction`` when a task is known;
- ``provenance``: versions and git revision (:func:`slem.provenance.provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slem.data.task import Task
from slem.methodology import Methodology
from slem.provenance import provenance


def save_methodology(
    methodology: Methodology,
    directory: str | Path,
    config: BaseModel | Mapping[str, Any] | None = None,
    task: Task | None = None,
    *,
    trained_on: Mapping[str, Any] | None = None,
    applied_from: Any = None,
    applied: bool = False,
) -> Path:
    """Write ``methodology`` with its metadata into ``directory`` (created; returned).

    ``config``: the training config (a pydantic model or a mapping in its JSON form).
    ``task``: the task it was trained on (or applied to). ``trained_on``: further fields of
    ``meta_trained_on`` (or ``applied_to``). ``applied``: the methodology was applied frozen,
    not learned; ``applied_from`` is then the source's ``meta_trained_on``.

    Raises:
        SlemError: ``directory`` cannot be created or written.
    """
    info: dict[str, Any] = {}
    if config is not None:
        info["training_config"] = (
            config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        )
    on: dict[str, Any] = {}
    if task is not None:
        on = {
            "dataset": task.name,
            "noise": str(task.noise) if task.noise else None,
            "imbalance": task.imbalance,
        }
        info["class_groups"] = list(task.features.class_groups)
        info["class_counts"] = list(task.features.class_counts)
        info["label_correction"] = bool(getattr(methodology, "label_correction", False))
    on.update(trained_on or {})
    if applied:
        info["meta_trained_on"] = applied_from
        info["applied_to"] = on
    else:
        info["meta_trained_on"] = on
    info["provenance"] = provenance()
    return methodology.save(directory, **info)
