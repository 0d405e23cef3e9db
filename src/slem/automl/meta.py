"""Meta-learning across tasks: a store of past studies, warm start from the nearest tasks, a
zero-shot configuration predictor and a greedy portfolio.

The store (:class:`MetaStore`, one JSON file) keeps for every earlier task its meta-features
(:func:`slem.data.meta_features.meta_features`), the configurations its study tried with their
validation scores, and, for a shared pool of candidate configurations (the best few of every
task), each candidate's score on every task. From it:

* **warm start** enqueues the best configurations of the ``k`` tasks nearest in standardized
  meta-feature space;
* **zero-shot** (SLeM's eq. 3: learn the methodology from observations) fits a regressor from
  a task's meta-features to every candidate's normalized score, and proposes, for a new task,
  the candidate it predicts best, with no trial;
* **portfolio**: a greedy set of candidates that together score well on every stored task.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from slem.errors import SlemError, validation_message

Config = dict[str, Any]


@dataclass
class TaskRecord:
    name: str
    meta_features: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"params": ..., "value": ...}

    def best(self, n: int = 1) -> list[Config]:
        """The ``n`` best distinct configurations of this task's study."""
        out: list[Config] = []
        for t in sorted(self.trials, key=lambda t: -t["value"]):
            if t["params"] not in out:
                out.append(t["params"])
            if len(out) == n:
                break
        return out


@dataclass
class MetaStore:
    """Past studies: task records, candidate configurations and their cross-task scores
    (``scores[task][i]`` is candidate ``i``'s validation score on ``task``)."""

    tasks: list[TaskRecord] = field(default_factory=list)
    candidates: list[Config] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path) -> MetaStore:
        """The store in a JSON file written by :meth:`save`.

        Raises:
            SlemError: the file is missing, unreadable, not JSON, or not a meta-dataset
                (truncated, overwritten); the message names it and how to rebuild it.
        """
        p = Path(path)
        if not p.is_file():
            raise SlemError(f"no meta-dataset at '{p}'; build one with 'slem meta-dataset'")
        rebuild = f"rebuild it with 'slem meta-dataset --out {p}'"
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = (
                f"{exc.msg} at line {exc.lineno}"
                if isinstance(exc, json.JSONDecodeError)
                else (str(exc).splitlines() or [type(exc).__name__])[0]
            )
            raise SlemError(f"the meta-dataset {p} is damaged ({detail}); {rebuild}") from None
        try:
            doc = _MetaFile.model_validate(raw)
        except ValidationError as exc:
            raise SlemError(
                f"the meta-dataset {p} is damaged ({validation_message(exc)}); {rebuild}"
            ) from None
        return cls(
            tasks=[
                TaskRecord(t.name, t.meta_features, [x.model_dump() for x in t.trials])
                for t in doc.tasks
            ],
            candidates=doc.candidates,
            scores=doc.scores,
            info=doc.info,
        )

    def save(self, path: str | Path) -> Path:
        """Write the store as JSON (atomically: a reader never sees half a file)."""
        from slem.rundir import atomic_write_text

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "info": self.info,
            "tasks": [asdict(t) for t in self.tasks],
            "candidates": self.candidates,
            "scores": self.scores,
        }
        atomic_write_text(p, json.dumps(doc, default=_json_number))
        return p

    # ------------------------------------------------------------------ contents

    def add(
        self, name: str, meta_features: Mapping[str, float], trials: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record (or replace) a task's meta-features and its complete trials."""
        record = TaskRecord(
            name,
            {k: float(v) for k, v in meta_features.items()},
            [{"params": dict(t["params"]), "value": float(t["value"])} for t in trials],
        )
        self.tasks = [t for t in self.tasks if t.name != name] + [record]

    def names(self, exclude: Sequence[str] = ()) -> list[str]:
        return [t.name for t in self.tasks if t.name not in exclude]

    def record(self, name: str) -> TaskRecord:
        for t in self.tasks:
            if t.name == name:
                return t
        raise SlemError(f"the meta-dataset has no task '{name}'")

    def pool(self, per_task: int = 2, exclude: Sequence[str] = ()) -> list[Config]:
        """Distinct best configurations of the stored tasks (the candidate pool)."""
        out: list[Config] = []
        for t in self.tasks:
            if t.name in exclude:
                continue
            out.extend(c for c in t.best(per_task) if c not in out)
        return out

    # ------------------------------------------------------------------ neighbours

    def feature_names(self) -> list[str]:
        return sorted({k for t in self.tasks for k in t.meta_features})

    def matrix(self, names: Sequence[str], tasks: Sequence[TaskRecord]) -> np.ndarray:
        return np.array(
            [[t.meta_features.get(n, math.nan) for n in names] for t in tasks], dtype=np.float64
        )

    def nearest(
        self, meta_features: Mapping[str, float], k: int, exclude: Sequence[str] = ()
    ) -> list[tuple[str, float]]:
        """The ``k`` stored tasks nearest to ``meta_features`` (Euclidean distance after
        standardizing every meta-feature over the stored tasks; missing values count as the
        median), with their distances."""
        pool = [t for t in self.tasks if t.name not in exclude]
        if not pool:
            raise SlemError("the meta-dataset holds no task to compare with")
        names = self.feature_names()
        X = self.matrix(names, pool)
        q = np.array([meta_features.get(n, math.nan) for n in names], dtype=np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # features undefined on all tasks
            X = _signed_log(X)
            q = _signed_log(q)
            med = np.nanmedian(X, axis=0)
            std = np.nanstd(X, axis=0)
        med = np.where(np.isfinite(med), med, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        Z = (np.where(np.isfinite(X), X, med) - med) / std
        z = (np.where(np.isfinite(q), q, med) - med) / std
        d = np.sqrt(((Z - z) ** 2).sum(1))
        order = np.argsort(d)[:k]
        return [(pool[i].name, float(d[i])) for i in order]


class _TrialDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any]
    value: float


class _TaskDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    meta_features: dict[str, float]
    trials: list[_TrialDoc] = []


class _MetaFile(BaseModel):
    """The layout of a meta-dataset file (checked when it is read)."""

    info: dict[str, Any] = {}
    tasks: list[_TaskDoc]
    candidates: list[dict[str, Any]] = []
    scores: dict[str, list[float]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> _MetaFile:
        names = {t.name for t in self.tasks}
        for name, row in self.scores.items():
            if name not in names:
                raise ValueError(f"scores name task '{name}', which the file does not hold")
            if len(row) != len(self.candidates):
                raise ValueError(
                    f"task '{name}' has {len(row)} scores for {len(self.candidates)} candidates"
                )
        return self


def _json_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def warm_start_configs(
    store: MetaStore,
    meta_features: Mapping[str, float],
    k: int = 3,
    per_task: int = 1,
    exclude: Sequence[str] = (),
) -> list[Config]:
    """The best configurations of the ``k`` nearest stored tasks, nearest first."""
    return [c for c, _ in warm_start_sources(store, meta_features, k, per_task, exclude)]


def warm_start_sources(
    store: MetaStore,
    meta_features: Mapping[str, float],
    k: int = 3,
    per_task: int = 1,
    exclude: Sequence[str] = (),
) -> list[tuple[Config, str]]:
    """:func:`warm_start_configs` with the name of the stored task each came from (the
    nearest that holds it)."""
    out: list[tuple[Config, str]] = []
    for name, _ in store.nearest(meta_features, k, exclude):
        for c in store.record(name).best(per_task):
            if all(c != seen for seen, _ in out):
                out.append((c, name))
    return out


# ---------------------------------------------------------------------- zero-shot


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))  # counts and ratios span orders of magnitude


class ZeroShot:
    """Learns, from the stored tasks, which candidate configuration suits which task: a random
    forest maps a task's meta-features to the normalized scores of all candidates (each score
    divided by the task's best), and :meth:`rank` orders the candidates for a new task by
    their predicted scores, with no trial. Trees on the meta-features capture interactions
    such as "kNN wins on small, low-dimensional tables"."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.features: list[str] = []
        self.candidates: list[Config] = []
        self.model: Any = None

    def _x(self, metas: Sequence[Mapping[str, float]]) -> np.ndarray:
        X = np.array([[m.get(n, math.nan) for n in self.features] for m in metas], dtype=float)
        with np.errstate(all="ignore"):
            return np.nan_to_num(_signed_log(X), nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, store: MetaStore, exclude: Sequence[str] = ()) -> ZeroShot:
        from sklearn.ensemble import RandomForestRegressor

        names = [n for n in store.scores if n not in exclude]
        if len(names) < 2 or not store.candidates:
            raise SlemError("the meta-dataset needs cross-task scores of at least 2 tasks")
        self.features = store.feature_names()
        self.candidates = list(store.candidates)
        S = np.array([store.scores[n] for n in names], dtype=float)
        S = np.nan_to_num(S / np.maximum(np.nanmax(S, axis=1, keepdims=True), 1e-12), nan=0.0)
        X = self._x([store.record(n).meta_features for n in names])
        self.model = RandomForestRegressor(
            n_estimators=300, min_samples_leaf=1, max_features=0.5, random_state=self.seed
        ).fit(X, S)
        return self

    def rank(self, meta_features: Mapping[str, float]) -> list[Config]:
        """The candidates, best first, by predicted normalized score on the task."""
        if self.model is None:
            raise SlemError("fit the zero-shot predictor before asking it")
        pred = np.asarray(self.model.predict(self._x([meta_features]))).reshape(-1)
        return [self.candidates[i] for i in np.argsort(-pred, kind="stable")]

    def propose(self, meta_features: Mapping[str, float]) -> Config:
        return self.rank(meta_features)[0]


# ---------------------------------------------------------------------- portfolio


def portfolio(store: MetaStore, size: int, exclude: Sequence[str] = ()) -> list[Config]:
    """Greedy portfolio over the candidate pool: each step adds the candidate that most raises
    the mean over stored tasks of the best normalized score in the portfolio (score divided by
    the task's best candidate score)."""
    names = [n for n in store.scores if n not in exclude]
    if not names or not store.candidates:
        raise SlemError("the meta-dataset has no cross-task scores to build a portfolio from")
    S = np.array([store.scores[n] for n in names], dtype=np.float64)  # tasks x candidates
    S = S / np.maximum(np.nanmax(S, axis=1, keepdims=True), 1e-12)
    S = np.nan_to_num(S, nan=0.0)
    chosen: list[int] = []
    covered = np.zeros(len(names))
    for _ in range(min(size, S.shape[1])):
        gains = np.maximum(S, covered[:, None]).mean(0)
        gains[chosen] = -np.inf
        best = int(np.argmax(gains))
        chosen.append(best)
        covered = np.maximum(covered, S[:, best])
    return [store.candidates[i] for i in chosen]
