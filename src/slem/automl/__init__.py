"""Black-box AutoML on Optuna: search spaces, CASH, multi-fidelity, meta-learning across tasks."""

from slem.automl.cash import FAMILIES, build_pipeline, cash_space
from slem.automl.config import HPOConfig, parse_hpo_config
from slem.automl.space import Param, SearchSpace

__all__ = [
    "FAMILIES",
    "HPOConfig",
    "Param",
    "SearchSpace",
    "build_pipeline",
    "cash_space",
    "parse_hpo_config",
]
