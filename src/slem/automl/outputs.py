"""What a study leaves a user to act on, next to ``best.json`` in its run directory.

* ``best.yaml`` (:func:`write_best_config`). For a ``train`` objective: the base training
  config with the best trial's params set, resolved (every field, as a run's
  ``config.yaml``; file paths absolute), so that ``slem train RUN/best.yaml --out runs/x``
  runs it as it is, from any directory. For ``cash``: the chosen configuration in readable
  form: its ``params`` (:func:`slem.automl.cash.build_pipeline` rebuilds the pipeline from
  them), the pipeline's ``steps`` with the parameters that differ from scikit-learn's
  defaults, the data, and the scores.
* the refit (``slem hpo --refit``) in ``RUN/refit/``. ``train``: the CLI trains
  :func:`best_train_config` once more with :func:`slem.train.train_run`: a normal run
  directory (``config.yaml``, ``summary.json``, ``model.safetensors``, ...). ``cash``
  (:func:`refit_cash`): the chosen pipeline fitted on the training and validation splits,
  saved with skops as ``pipeline.skops`` (read it with
  :func:`slem.automl.cash.load_pipeline`), and ``pipeline.json``: what a predictor needs to
  map new rows (the input columns in order, the class names, the input standardization).

The best trial is the best *complete* trial on the study's objective, a validation score;
test scores are reported and never used to choose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import yaml

from slem.automl.cash import pipeline_steps, save_pipeline
from slem.automl.load import absolute_paths
from slem.automl.objectives import CashTrial, TrainTrial
from slem.automl.study import SOURCE
from slem.errors import SlemError
from slem.rundir import atomic_write_text

if TYPE_CHECKING:
    from slem.train.config import TrainConfig

BEST_CONFIG = "best.yaml"
REFIT_DIR = "refit"
PIPELINE_FILE = "pipeline.skops"
PIPELINE_INFO = "pipeline.json"
PIPELINE_FORMAT = "slem-cash-pipeline"


def best_train_config(objective: TrainTrial, params: Mapping[str, Any]) -> TrainConfig:
    """The training config of a trial: the base with ``params`` set, validated."""
    from slem.train.config import parse_train_config

    return parse_train_config(objective.values_for(params))


def _metric(objective: CashTrial | TrainTrial) -> str:
    return objective.config.metric


def _test(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {k: v for k, v in trial.user_attrs.items() if k.startswith("test_")}


def _numbers(values: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )


def write_best_config(
    study: optuna.Study,
    objective: CashTrial | TrainTrial,
    trial: optuna.trial.FrozenTrial,
    run_dir: Path,
) -> Path:
    """``run_dir/best.yaml`` for ``trial`` (the study's best; see the module docstring)."""
    path = run_dir / BEST_CONFIG
    metric = _metric(objective)
    test = _numbers(_test(trial)) or "none"
    head = [
        f"# slem hpo, study '{study.study_name}': the best configuration, trial {trial.number} "
        f"(source: {trial.user_attrs.get(SOURCE, 'sampler')}).",
        f"# {metric} {trial.value:.4f} on the validation split chose it; the test score",
        f"# ({test}) played no part.",
    ]
    if isinstance(objective, TrainTrial):
        cfg = best_train_config(objective, trial.params)
        head += [
            "# The base training config with these params set (every field; paths absolute):",
            *(f"#   {k}: {v}" for k, v in trial.params.items()),
            "# Run it with:",
            f"#   slem train {path} --out runs/{study.study_name}-best",
        ]
        body = cfg.model_dump(mode="json")
    else:
        head += [
            "# params rebuild the pipeline: slem.automl.cash.build_pipeline(params); steps are",
            "# its scikit-learn steps with the parameters that differ from the defaults.",
        ]
        body = cash_best(objective, trial, study.study_name)
    text = "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
    return path


def cash_best(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str
) -> dict[str, Any]:
    """The readable form of a CASH trial's configuration (the body of ``best.yaml``)."""
    from slem.automl.cash import build_pipeline

    params = dict(trial.params)
    return {
        "study": study_name,
        "trial": trial.number,
        "source": trial.user_attrs.get(SOURCE, "sampler"),
        "metric": objective.config.metric,
        "value": trial.value,
        "test": _test(trial),
        "data": _data(objective),
        "params": params,
        "steps": pipeline_steps(build_pipeline(params, objective.seed)),
    }


def _data(objective: CashTrial) -> dict[str, Any]:
    data = objective.config.data.model_dump(mode="json", exclude_defaults=True)
    return dict(absolute_paths({"data": data})["data"])


def check_refit_dir(run_dir: Path) -> None:
    """``--refit`` writes ``run_dir/refit``, which must not hold anything yet (checked before
    the study runs).

    Raises:
        SlemError: it exists and is not empty.
    """
    out = run_dir / REFIT_DIR
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlemError(
            f"--refit writes {out}, which already holds a refit; move it away (an interrupted "
            f"train refit continues with 'slem train --resume {out}'), or drop --refit"
        )


def refit_cash(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str, run_dir: Path
) -> dict[str, Any]:
    """Fit ``trial``'s pipeline on the training and validation splits and write
    ``run_dir/refit/pipeline.skops`` and ``pipeline.json``; returns the latter's contents
    (``test``: the refit pipeline's score on the test split)."""
    out = run_dir / REFIT_DIR
    params = dict(trial.params)
    pipe = objective.refit(params)
    test = objective.evaluate(pipe, "test")
    info = pipeline_info(objective, trial, study_name, test)
    out.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, out / PIPELINE_FILE)
    atomic_write_text(out / PIPELINE_INFO, json.dumps(info, indent=2, default=_plain))
    return info


def pipeline_info(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str, test: float
) -> dict[str, Any]:
    """The contents of ``pipeline.json``: what the pipeline is and how new rows reach it."""
    import sklearn
    import skops

    from slem import __version__

    task = objective.task
    norm = task.normalizer
    return {
        "format": PIPELINE_FORMAT,
        "version": 1,
        "pipeline": PIPELINE_FILE,
        "load": "slem.automl.cash.load_pipeline(path)",
        "study": study_name,
        "trial": trial.number,
        "source": trial.user_attrs.get(SOURCE, "sampler"),
        "params": dict(trial.params),
        "metric": objective.config.metric,
        "val": trial.value,
        "test": test,
        "fitted_on": ["train", "val"],
        "rows": len(task.train) + len(task.val),
        "task_type": task.task_type,
        "dataset": task.name,
        "data": _data(objective),
        "inputs": (
            "rows encoded as the training table was (slem.data.tabular.TableEncoder: the "
            "columns feature_names, in this order), missing values filled with "
            "normalizer.fill, then standardized: (x - normalizer.mean) / normalizer.std "
            "(normalizer null: as encoded)"
        ),
        "n_features": int(np.prod(task.train.X.shape[1:])),
        "feature_names": feature_names(objective),
        "class_names": list(task.class_names),
        "predicts": "class indices: class_names[i] is the label of prediction i",
        "normalizer": None
        if norm is None
        else {
            "mean": norm.mean.reshape(-1).tolist(),
            "std": norm.std.reshape(-1).tolist(),
            "fill": None if norm.fill is None else norm.fill.reshape(-1).tolist(),
        },
        "versions": {
            "slem": __version__,
            "scikit-learn": sklearn.__version__,
            "skops": skops.__version__,
        },
    }


def feature_names(objective: CashTrial) -> list[str] | None:
    """The encoded input columns of the objective's table in input order (None when the
    source names none, e.g. a signal)."""
    from slem.data.registry import LoadOptions, load_dataset
    from slem.data.task_sampling import generated_size

    c = objective.config.data
    dataset = load_dataset(
        c.name,
        LoadOptions(
            seed=c.seed,
            size=c.size if c.train_size is None else generated_size(c),
            data_seed=c.data_seed,
            data_dir=c.data_dir,
            target=c.target,
            task_type=c.task_type,
            impute=c.impute,
            meta=c.meta,
            test=c.test,
        ),
    )
    names = list(dataset.feature_names)
    width = int(np.prod(objective.task.train.X.shape[1:]))
    return names if len(names) == width else None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
