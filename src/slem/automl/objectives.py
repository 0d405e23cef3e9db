"""What one trial does: fit a CASH pipeline on a table, or run ``slem train`` with the trial's
values set in the config. Both report intermediate scores to the pruner (data fractions or
epochs) and record the trial's test score as a user attribute that is never used to choose.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from slem.automl.cash import build_pipeline, cash_space
from slem.automl.config import CashObjective, TrainObjective
from slem.automl.space import SearchSpace
from slem.data.task import Task, build_task
from slem.errors import SlemError
from slem.train.callbacks import Callback
from slem.train.config import set_dotted, without_unread_sections


def fidelity_steps(min_fraction: float, factor: int) -> list[float]:
    """Data fractions ``min_fraction * factor**i`` up to 1 (1 included)."""
    steps = []
    f = min_fraction
    while round(100 * f) < 100:  # 0.111 * 9 = 0.999 is the full set
        steps.append(f)
        f *= factor
    return [*steps, 1.0]


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    fn = balanced_accuracy_score if metric == "balanced_accuracy" else accuracy_score
    return float(fn(y_true, y_pred))


def _subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified subset of ``fraction`` of the rows, at least 2 per class present."""
    if fraction >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(2, math.ceil(fraction * len(idx)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


class CashTrial:
    """A trial of CASH: the family and its hyperparameters from the space, the pipeline fitted
    on (a fraction of) the training split, scored on the validation split."""

    def __init__(self, config: CashObjective, factor: int = 3, seed: int = 0) -> None:
        self.config = config
        self.space: SearchSpace = cash_space(config.families) if config.families else cash_space()
        self.task: Task = build_task(config.data)
        if not self.task.is_classification:
            raise SlemError(f"CASH needs class labels, but '{self.task.name}' is a regression task")
        self.seed = seed
        self.steps = (
            fidelity_steps(config.min_fraction, factor)
            if config.fidelity == "data_fraction"
            else [1.0]
        )

    @property
    def budgets(self) -> list[int]:
        """Pruner steps: the data fractions in percent."""
        return [max(1, round(100 * f)) for f in self.steps]

    def fit(self, values: Mapping[str, Any], fraction: float = 1.0) -> Any:
        t = self.task
        rows = _subsample(t.train.y, fraction, self.seed)
        pipe = build_pipeline(values, self.seed)
        if values.get("family") == "knn":  # k cannot exceed the rows it is fitted on
            pipe.set_params(model__n_neighbors=min(int(values["knn.n_neighbors"]), len(rows)))
        with warnings.catch_warnings():  # convergence and small-sample notes of some trials
            warnings.simplefilter("ignore")
            pipe.fit(t.train.X.reshape(len(t.train), -1)[rows], t.train.y[rows])
        return pipe

    def refit(self, values: Mapping[str, Any]) -> Any:
        """The pipeline of ``values`` fitted on the training and validation splits together
        (all the rows the study may use; the test split stays out), for ``--refit``."""
        t = self.task
        X = np.concatenate([s.X.reshape(len(s), -1) for s in (t.train, t.val)])
        y = np.concatenate([t.train.y, t.val.y])
        pipe = build_pipeline(values, self.seed)
        if values.get("family") == "knn":
            pipe.set_params(model__n_neighbors=min(int(values["knn.n_neighbors"]), len(y)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.fit(X, y)
        return pipe

    def evaluate(self, pipe: Any, split: str) -> float:
        s = getattr(self.task, split)
        return score(self.config.metric, s.y, pipe.predict(s.X.reshape(len(s), -1)))

    def __call__(self, trial: Any) -> float:
        return self.run(trial, self.space.suggest(trial))

    def run(self, trial: Any, values: dict[str, Any]) -> float:
        """The pipeline of ``values`` fitted and scored; reports to ``trial``'s pruner."""
        import optuna

        value = float("nan")
        for fraction, step in zip(self.steps, self.budgets, strict=True):
            pipe = self.fit(values, fraction)
            value = self.evaluate(pipe, "val")
            if len(self.steps) > 1:
                trial.report(value, step)
                if fraction < 1.0 and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at {step}% of the training data")
        trial.set_user_attr(f"test_{self.config.metric}", self.evaluate(pipe, "test"))
        return value


def conditioned_on_method(space: SearchSpace, base_method: Any = None) -> SearchSpace:
    """``space`` with every param of a method-specific config section (``meta.lr``,
    ``loss.gce_q``, ...) active only for the choices of a categorical ``method`` param whose
    method reads that section (:attr:`slem.train.methods.MethodSpec.sections`), so an ``erm``
    trial never suggests ``meta.lr``. A param every choice reads is kept as it is.

    Raises:
        SlemError: a param that would never be read: no method it can be active with
            (``method``'s choices, those of its own condition on ``method``, else
            ``base_method``) reads its section, or its own condition names one that does not;
            or one some choices do not read that comes before ``method`` (a condition needs
            its parent first).
    """
    from slem.train.config import METHOD_SECTIONS
    from slem.train.methods import get_method, method_names, methods_reading

    names = [p.name for p in space.params]
    method = space.params[names.index("method")] if "method" in names else None
    choices = method.choices if method is not None and method.kind == "categorical" else None
    known = method_names()
    for c in choices or ():
        if c not in known:
            try:
                get_method(str(c))
            except SlemError as exc:
                raise SlemError(f"search space param 'method': {exc}") from None
    if choices is None and base_method not in known:
        return space  # the base config's own validation names the problem

    def reads(name: Any, section: str) -> bool:
        return name in known and section in get_method(name).sections

    params = []
    for i, p in enumerate(space.params):
        section = p.name.split(".", 1)[0]
        if section not in METHOD_SECTIONS:
            params.append(p)
            continue
        own = "method" in p.when
        candidates = p.when["method"] if own else choices if choices else (base_method,)
        readers = tuple(c for c in candidates if reads(c, section))
        if not readers or (len(readers) < len(candidates) and (own or not choices)):
            unread = [str(c) for c in candidates if not reads(c, section)]
            raise SlemError(
                f"search space param '{p.name}': method {', '.join(unread)} does not read the "
                f"{section} section (methods that do: {', '.join(methods_reading(section))})"
            )
        if len(readers) < len(candidates) and not own:
            if i < names.index("method"):
                raise SlemError(
                    f"search space param '{p.name}' is read only by method "
                    f"{', '.join(readers)}: list method before it, so that it is suggested "
                    "only for them"
                )
            p = replace(p, when={"method": readers, **p.when})
        params.append(p)
    return SearchSpace(params)


class TrainTrial:
    """A trial of ``slem train``: the trial's values set at their dotted config keys, the
    validation metric reported every epoch (epochs are the budget).

    With ``method`` in the search space, a param of a method-specific section is suggested
    only for the methods that read it (:func:`conditioned_on_method`), and a trial's config
    leaves out the base config's sections its method does not read (and, for ``joint``, those
    of the components the trial left out)."""

    def __init__(self, config: TrainObjective, seed: int | None = None) -> None:
        from slem.train.config import load_yaml, parse_train_config
        from slem.train.presets import apply_preset

        self.config = config
        self.base: dict[str, Any] = (
            load_yaml(config.base) if isinstance(config.base, str) else dict(config.base)
        )
        space = SearchSpace.from_mapping(config.space)
        self.space = conditioned_on_method(space, apply_preset(self.base).get("method"))
        self._tasks: dict[str, Task] = {}
        for p in self.space.params:  # every key must exist: fail before the first trial
            probe = copy.deepcopy(self.base)
            for parent, allowed in p.when.items():  # as in a trial where the param is active
                set_dotted(probe, parent, allowed[0], f"search space key '{parent}'")
            if p.name == "method":
                set_dotted(probe, p.name, p.grid(2)[0], f"search space key '{p.name}'")
                probe = without_unread_sections(probe)
            else:
                probe = without_unread_sections(probe)
                set_dotted(probe, p.name, p.grid(2)[0], f"search space key '{p.name}'")
            try:
                parse_train_config(probe)
            except SlemError as exc:
                raise SlemError(f"search space param '{p.name}': {exc}") from None
        base = parse_train_config(self.base)
        if base.data is None:
            raise SlemError("the base config has no data section: a trial builds its task from it")
        self.epochs = base.optim.epochs

    def values_for(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's config values: the base with ``params`` set, without the sections the
        trial's method does not read."""
        values = copy.deepcopy(self.base)
        for key, value in params.items():
            set_dotted(values, key, value, f"search space key '{key}'")
        return without_unread_sections(values)

    def __call__(self, trial: Any) -> float:
        return self.run(trial, self.space.suggest(trial))

    def run(self, trial: Any, values: dict[str, Any]) -> float:
        """A training run with ``values`` set in the base config; reports every epoch."""
        from slem.train import make_trainer, parse_train_config

        cfg = parse_train_config(self.values_for(values))
        key = cfg.data.model_dump_json() if cfg.data is not None else ""
        if key not in self._tasks:
            self._tasks[key] = build_task(cfg.data)
        trainer = make_trainer(
            cfg, self._tasks[key], callbacks=[ReportToTrial(trial, self.config.metric)]
        )
        result = trainer.fit(progress=False)
        trial.set_user_attr("test_accuracy", result.summary.get("test_accuracy"))
        return float(result.history[-1][self.config.metric])


class ReportToTrial(Callback):
    """A training callback: the validation metric to the trial after every epoch, and a
    pruned trial stops the run."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        import optuna

        self.trial.report(float(metrics[self.metric]), int(metrics["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epoch']}")


def make_objective(config: Any, factor: int = 3, seed: int = 0) -> CashTrial | TrainTrial:
    if isinstance(config, CashObjective):
        return CashTrial(config, factor, seed)
    return TrainTrial(config)
