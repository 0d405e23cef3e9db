"""Black-box AutoML on Optuna: search spaces, CASH, multi-fidelity, meta-learning across tasks,
architecture search (black-box and DARTS, ``slem nas``)."""

from slem.automl.cash import FAMILIES, build_pipeline, cash_space
from slem.automl.config import HPOConfig, parse_hpo_config
from slem.automl.nas import (
    RegularizedEvolutionSampler,
    blackbox_search,
    hypervolume,
    nasbench201_table,
    pareto_front,
)
from slem.automl.space import Param, SearchSpace

__all__ = [
    "FAMILIES",
    "HPOConfig",
    "Param",
    "RegularizedEvolutionSampler",
    "SearchSpace",
    "blackbox_search",
    "build_pipeline",
    "cash_space",
    "hypervolume",
    "nasbench201_table",
    "pareto_front",
    "parse_hpo_config",
]
