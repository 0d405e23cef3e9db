"""Several methodologies learned together and saved as one artifact.

A :class:`MethodologyBundle` holds at most one methodology per *role*: ``weighting`` (MW-Net
or CMW-Net), ``loss`` (a loss adjuster), ``transition`` (a noise-transition net) and
``schedule`` (MLR-SNet). Its JSON lists each part's kind and constructor arguments, so
:func:`~slem.methodology.load_methodology` rebuilds the whole bundle from the directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from slem.errors import SlemError
from slem.methodology.base import REGISTRY, Methodology

#: the role each methodology kind plays in a bundle
ROLES: dict[str, str] = {
    "mwnet": "weighting",
    "cmwnet": "weighting",
    "loss_adjuster": "loss",
    "transition": "transition",
    "lr_schedule": "schedule",
}


def role_of(methodology: Methodology) -> str:
    if methodology.kind not in ROLES:
        raise SlemError(
            f"a '{methodology.kind}' methodology cannot join a bundle; bundles take "
            + ", ".join(ROLES)
        )
    return ROLES[methodology.kind]


class MethodologyBundle(Methodology):
    """What it learns is the union of what its parts learn, against one meta objective: e.g.
    which samples to trust (weighting), which robust loss each gets (loss adjuster) and how
    large a step to take (schedule), each part adapting to the others during meta-training."""

    kind: ClassVar[str] = "bundle"

    def __init__(self, parts: Mapping[str, Mapping[str, Any]]) -> None:
        """``parts``: role -> ``{"kind": ..., "config": {...}}`` (what :meth:`config` saves)."""
        super().__init__()
        self.parts = nn.ModuleDict()
        for role, spec in parts.items():
            kind = spec.get("kind")
            if kind not in ROLES:
                raise SlemError(
                    f"bundle part '{role}' has kind {kind!r}; known: {', '.join(ROLES)}"
                )
            if ROLES[kind] != role:
                raise SlemError(f"a '{kind}' methodology plays role '{ROLES[kind]}', not '{role}'")
            self.parts[role] = REGISTRY[kind](**spec.get("config", {}))

    @classmethod
    def of(cls, *methodologies: Methodology) -> MethodologyBundle:
        """Bundle existing methodologies (their current weights are kept)."""
        roles = [role_of(m) for m in methodologies]
        if len(set(roles)) != len(roles):
            raise SlemError(f"a bundle takes one methodology per role, got roles {roles}")
        bundle = cls(
            {
                r: {"kind": m.kind, "config": m.config()}
                for r, m in zip(roles, methodologies, strict=True)
            }
        )
        for role, m in zip(roles, methodologies, strict=True):
            bundle.parts[role].load_state_dict(m.state_dict())
        return bundle

    def config(self) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        for role, part in self.parts.items():
            assert isinstance(part, Methodology)
            parts[role] = {"kind": part.kind, "config": part.config()}
        return {"parts": parts}

    def observed_inputs(self) -> tuple[str, ...]:
        out: list[str] = []
        for part in self.parts.values():
            assert isinstance(part, Methodology)
            out.extend(f for f in part.observed_inputs() if f not in out)
        return tuple(out)

    def part(self, role: str) -> Methodology | None:
        """The methodology playing ``role`` (None when the bundle has none)."""
        m = self.parts[role] if role in self.parts else None  # noqa: SIM401 (no .get)
        assert m is None or isinstance(m, Methodology)
        return m

    def forward(self, *args: Any) -> Any:
        raise SlemError("a bundle is applied by slem.train.bundle.BundleTrainer, part by part")


def as_bundle(methodology: Methodology) -> MethodologyBundle:
    """``methodology`` itself when it is a bundle, else a one-part bundle sharing its weights."""
    if isinstance(methodology, MethodologyBundle):
        return methodology
    bundle = MethodologyBundle({})
    bundle.parts[role_of(methodology)] = methodology
    return bundle
