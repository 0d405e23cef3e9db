"""The zoo of learning methodologies ``h``: plain ``nn.Module``s with one hook each, saved as
self-describing artifacts (safetensors weights + JSON)."""

from slem.methodology.base import REGISTRY, Methodology, load_methodology, read_artifact_info
from slem.methodology.bbo import RNNBlackBoxOptimizer
from slem.methodology.optimizer import LearnedOptimizer, LSTMOptimizerNet, preprocess_gradient
from slem.methodology.schedule import MLRSNet, ScheduleNet, lr_scale
from slem.methodology.weighting import CMWNet, CMWNetSL, MWNet, build_weighting

__all__ = [
    "REGISTRY",
    "CMWNet",
    "CMWNetSL",
    "LSTMOptimizerNet",
    "LearnedOptimizer",
    "MLRSNet",
    "MWNet",
    "Methodology",
    "RNNBlackBoxOptimizer",
    "ScheduleNet",
    "build_weighting",
    "load_methodology",
    "lr_scale",
    "preprocess_gradient",
    "read_artifact_info",
]
