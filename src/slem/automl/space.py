"""Search spaces with conditional hyperparameters, sampled define-by-run through Optuna.

A space is an ordered list of :class:`Param`. A param with ``when={"parent": [values]}`` is
suggested only when ``parent`` (an earlier param) took one of those values, so a trial of a
CASH space holds the SVM's ``gamma`` only when the family is ``svm`` and the kernel ``rbf``.
Optuna's samplers see exactly the params a trial suggests (TPE models conditional spaces with
``group=True``). In YAML a space is a mapping from names to specs::

    optim.lr: {type: float, low: 1.0e-3, high: 0.3, log: true}
    meta.interval: {type: int, low: 1, high: 5}
    model.arch: {type: categorical, choices: [mlp, cnn1d]}
    model.depth: {type: int, low: 1, high: 4, when: {model.arch: [mlp]}}

Every bad spec (empty space, ``low > high``, a log range touching 0, a condition on an unknown
or later param) is a one-line :class:`~slem.errors.SlemError` naming the param.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from slem.errors import SlemError

Kind = Literal["float", "int", "categorical"]
KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: a numeric range (optionally log-scaled or stepped) or choices, and
    the condition under which it exists."""

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"search space param '{self.name}'"
        if self.kind not in KINDS:
            raise SlemError(f"{where}: type '{self.kind}' is unknown; use {', '.join(KINDS)}")
        if self.kind == "categorical":
            if not self.choices:
                raise SlemError(f"{where}: a categorical param needs a non-empty 'choices' list")
            return
        if self.low is None or self.high is None:
            raise SlemError(f"{where}: a {self.kind} param needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SlemError(f"{where}: low and high must be finite numbers")
        if self.low > self.high:
            raise SlemError(f"{where}: low {self.low:g} is above high {self.high:g}")
        if self.log and self.low <= 0:
            raise SlemError(f"{where}: a log scale needs low > 0, not {self.low:g}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise SlemError(f"{where}: step must be > 0 and cannot be combined with log")
        if self.kind == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise SlemError(f"{where}: an int param needs integer low and high")

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this param exists given the values chosen so far."""
        return all(values.get(parent) in allowed for parent, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this param's value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self, points: int) -> list[Any]:
        """Grid values: every choice, or ``points`` values spread over the range."""
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is not None:
            values = np.arange(self.low, self.high + 1e-12 * max(1.0, abs(self.high)), self.step)
        elif self.log:
            values = np.geomspace(self.low, self.high, points)
        else:
            values = np.linspace(self.low, self.high, points)
        if self.kind == "int":
            return sorted({round(float(v)) for v in values})
        return [float(v) for v in values]

    def values(self, limit: int) -> Sequence[Any] | None:
        """Every value this param can take (choices, an int range, a stepped float range), or
        None when there are infinitely many (a float without step) or more than ``limit``."""
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "float" and self.step is None:
            return None
        step = self.step if self.step is not None else 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if count > limit:
            return None
        if self.kind == "int":
            return range(int(self.low), int(self.high) + 1, int(step))
        return [float(self.low + i * step) for i in range(count)]

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            spec["choices"] = list(self.choices)
        else:
            spec.update(low=self.low, high=self.high)
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = {k: list(v) for k, v in self.when.items()}
        return spec


SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}


def param_from_spec(name: str, spec: Any) -> Param:
    """A :class:`Param` from its YAML mapping (a bare list is shorthand for choices)."""
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping):
        raise SlemError(
            f"search space param '{name}' must be a mapping like {{type: float, low: 0.001, "
            f"high: 0.1, log: true}} or a list of choices, not {type(spec).__name__}"
        )
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SlemError(
            f"search space param '{name}': unknown key(s) {', '.join(sorted(unknown))}; use "
            + ", ".join(sorted(SPEC_KEYS))
        )
    kind = spec.get("type", "categorical" if "choices" in spec else "float")
    when = spec.get("when") or {}
    if not isinstance(when, Mapping):
        raise SlemError(f"search space param '{name}': 'when' must map a parent to its values")
    try:
        low = None if spec.get("low") is None else float(spec["low"])
        high = None if spec.get("high") is None else float(spec["high"])
        step = None if spec.get("step") is None else float(spec["step"])
    except (TypeError, ValueError):
        raise SlemError(
            f"search space param '{name}': low, high and step must be numbers"
        ) from None
    return Param(
        name=name,
        kind=kind,
        low=low,
        high=high,
        log=bool(spec.get("log", False)),
        step=step,
        choices=tuple(spec.get("choices") or ()),
        when={
            parent: tuple(v if isinstance(v, list | tuple) else [v]) for parent, v in when.items()
        },
    )


class SearchSpace:
    """An ordered set of (possibly conditional) hyperparameters."""

    def __init__(self, params: Iterable[Param]) -> None:
        self.params = list(params)
        if not self.params:
            raise SlemError("the search space is empty: name at least one hyperparameter")
        seen: dict[str, Param] = {}
        for p in self.params:
            if p.name in seen:
                raise SlemError(f"search space param '{p.name}' is defined twice")
            for parent, allowed in p.when.items():
                if parent not in seen:
                    raise SlemError(
                        f"search space param '{p.name}' depends on '{parent}', which is not "
                        "defined before it"
                    )
                parent_param = seen[parent]
                if parent_param.kind == "categorical":
                    bad = [v for v in allowed if v not in parent_param.choices]
                    if bad:
                        raise SlemError(
                            f"search space param '{p.name}': '{parent}' never takes {bad}; its "
                            f"choices are {list(parent_param.choices)}"
                        )
            seen[p.name] = p

    @classmethod
    def from_mapping(cls, specs: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(specs, Mapping):
            raise SlemError("the search space must map hyperparameter names to their ranges")
        return cls(param_from_spec(str(name), spec) for name, spec in specs.items())

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_spec() for p in self.params}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: the active params' values for this trial, in order."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return values

    def active_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` restricted to the params active under them (e.g. a stored best config)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.active(out) and p.name in values:
                out[p.name] = values[p.name]
        return out

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` (an active configuration) lies in this space: every value a
        choice of its param, or within its range (e.g. a configuration of another task's
        study, whose space held more model families)."""
        for p in self.params:
            if p.name not in values:
                continue
            v = values[p.name]
            if p.kind == "categorical":
                inside = v in p.choices
            else:
                low, high = p.low, p.high
                number = isinstance(v, int | float) and low is not None and high is not None
                inside = number and low <= v <= high
            if not inside:
                return False
        return True

    def grid(self, points: int = 5) -> dict[str, list[Any]]:
        """Every param's grid values (for the grid itself, over the tree of conditions, see
        :meth:`grid_configurations`)."""
        return {p.name: p.grid(points) for p in self.params}

    def configurations(
        self, values_of: Callable[[Param], Sequence[Any] | None], limit: int
    ) -> list[dict[str, Any]] | None:
        """The distinct *active* configurations of the space: the tree of conditions walked
        in order, every active param taking each of ``values_of(param)``; inactive params are
        absent (a family's hyperparameters appear only under that family). None when a param
        has infinitely many values (``values_of`` returned None) or there are more than
        ``limit`` configurations."""
        out: list[dict[str, Any]] = []
        current: dict[str, Any] = {}

        def walk(i: int) -> bool:
            if i == len(self.params):
                out.append(dict(current))
                return len(out) <= limit
            p = self.params[i]
            if not p.active(current):
                return walk(i + 1)
            values = values_of(p)
            if values is None:
                return False
            for v in values:
                current[p.name] = v
                if not walk(i + 1):
                    return False
                del current[p.name]
            return True

        return out if walk(0) else None

    def grid_configurations(self, points: int = 5, limit: int = 100_000) -> list[dict[str, Any]]:
        """The grid over the tree of conditions: every active param at its :meth:`Param.grid`
        values (``points`` per numeric range). A CASH space over logreg and kNN with 3 points
        has 48 such configurations, not the 288 of the product over all params.

        Raises:
            SlemError: more than ``limit`` grid points.
        """
        found = self.configurations(lambda p: p.grid(points), limit)
        if found is None:
            raise SlemError(
                f"the grid has more than {limit} points; lower study.grid_points or use "
                "another study.sampler (tpe, random)"
            )
        return found

    def finite_size(self, limit: int = 100_000) -> int | None:
        """The number of distinct configurations when the space is finite (categorical, int
        and stepped float params only) and holds at most ``limit``; None otherwise."""
        found = self.configurations(lambda p: p.values(limit), limit)
        return None if found is None else len(found)

    def __len__(self) -> int:
        return len(self.params)
