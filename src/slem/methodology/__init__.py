"""The zoo of learning methodologies ``h``: plain ``nn.Module``s with one hook each, saved as
self-describing artifacts (safetensors weights + JSON)."""

from slem.methodology.adjust import (
    LossAdjusterNet,
    TransitionNet,
    adjusted_loss,
    forward_corrected,
)
from slem.methodology.architecture import ArchitectureMixing
from slem.methodology.base import (
    REGISTRY,
    Methodology,
    freeze,
    load_frozen,
    load_methodology,
    read_artifact_info,
)
from slem.methodology.bbo import RNNBlackBoxOptimizer
from slem.methodology.bundle import ROLES, MethodologyBundle, as_bundle
from slem.methodology.few_shot import LEARNERS, FewShotLearner
from slem.methodology.optimizer import (
    LearnedInnerOptimizer,
    LearnedOptimizer,
    LSTMOptimizerNet,
    preprocess_gradient,
)
from slem.methodology.regression import HyperWeightNet
from slem.methodology.schedule import MLRSNet, ScheduleNet, lr_scale
from slem.methodology.weighting import (
    CMWNet,
    CMWNetSL,
    MWNet,
    build_weighting,
    normalize_weights,
)

__all__ = [
    "LEARNERS",
    "REGISTRY",
    "ROLES",
    "ArchitectureMixing",
    "CMWNet",
    "CMWNetSL",
    "FewShotLearner",
    "HyperWeightNet",
    "LSTMOptimizerNet",
    "LearnedInnerOptimizer",
    "LearnedOptimizer",
    "LossAdjusterNet",
    "MLRSNet",
    "MWNet",
    "Methodology",
    "MethodologyBundle",
    "RNNBlackBoxOptimizer",
    "ScheduleNet",
    "TransitionNet",
    "adjusted_loss",
    "as_bundle",
    "build_weighting",
    "forward_corrected",
    "freeze",
    "load_frozen",
    "load_methodology",
    "lr_scale",
    "normalize_weights",
    "preprocess_gradient",
    "read_artifact_info",
]
