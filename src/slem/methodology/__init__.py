"""The zoo of learning methodologies ``h``: plain ``nn.Module``s with one hook each, saved as
self-describing artifacts (safetensors weights + JSON)."""

from slem.methodology.base import REGISTRY, Methodology, load_methodology, read_artifact_info
from slem.methodology.weighting import CMWNet, CMWNetSL, MWNet, build_weighting

__all__ = [
    "REGISTRY",
    "CMWNet",
    "CMWNetSL",
    "MWNet",
    "Methodology",
    "build_weighting",
    "load_methodology",
    "read_artifact_info",
]
