"""The config of one training run (``slem train CONFIG.yaml``), as pydantic models.

A SLeM config and a baseline config differ only by ``method``. Every field is validated with
a message naming it; cross-field checks (e.g. a clean meta objective without a meta set) say
which field to set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slem.data.config import DataConfig
from slem.errors import SlemError, validation_message

Method = Literal[
    "erm",
    "gce",
    "sce",
    "bootstrap",
    "finetune",
    "class_balanced",
    "mwnet",
    "cmwnet",
    "cmwnet_sl",
    "apply",
]
META_METHODS = ("mwnet", "cmwnet", "cmwnet_sl")
HypergradMethod = Literal[
    "lookahead", "finite_difference", "first_order", "unrolled", "forward", "implicit"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    arch: Literal["auto", "mlp", "cnn1d", "cnn2d"] = Field(
        "auto", description="auto: mlp for tables, cnn1d for signals, cnn2d for images"
    )
    width: int = Field(32, ge=1, description="hidden units / base channels")
    depth: int = Field(2, ge=1, description="hidden layers of the MLP")
    dropout: float = Field(0.0, ge=0, lt=1)


class OptimConfig(_Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75], description="step schedule, fractions of epochs"
    )
    gamma: float = Field(0.1, gt=0, le=1)


class MetaConfig(_Strict):
    objective: Literal["clean", "dac", "clean+dac", "selected"] = Field(
        "clean", description="clean meta set, DAC-MR (no meta set), both, or self-selected"
    )
    hypergrad: HypergradMethod = "lookahead"
    interval: int = Field(1, ge=1, description="a meta step every k training steps")
    warmup_epochs: int = Field(1, ge=0, description="plain ERM epochs before meta-learning")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the methodology")
    weight_decay: float = Field(1e-4, ge=0)
    hidden: int = Field(100, ge=1)
    n_groups: int = Field(3, ge=1, description="class size groups (CMW-Net)")
    batch_size: int = Field(100, ge=1, description="meta (outer) batch size")
    normalize_weights: bool = Field(
        True,
        description="weights sum to the batch size (not under CMW-Net-SL's label "
        "correction, where a weight mixes two labels and stays in (0, 1))",
    )
    order: Literal["mwnet", "lagged"] = Field(
        "mwnet",
        description="mwnet: real step after the meta update; lagged: reuse the "
        "virtual step as the real one (cheaper)",
    )
    jvp_mode: Literal["forward", "difference"] = "forward"
    dac_weight: float = Field(1.0, ge=0, description="weight of DAC-MR in the meta objective")
    clean_weight: float = Field(1.0, ge=0, description="weight of the clean meta loss")
    dac_temperature: float = Field(0.5, gt=0, description="sharpening of the weak-view target")
    select_per_class: int = Field(10, ge=1, description="'selected': clean samples per class")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="CMW-Net-SL teacher EMA")
    sl_temperature: float = Field(0.5, gt=0, description="CMW-Net-SL pseudo-label sharpening")


class LossConfig(_Strict):
    gce_q: float = Field(0.7, gt=0, le=1)
    sce_alpha: float = Field(0.1, ge=0)
    sce_beta: float = Field(1.0, ge=0)
    bootstrap_beta: float = Field(0.95, ge=0, le=1)
    bootstrap_mode: Literal["soft", "hard"] = "soft"
    cb_beta: float = Field(0.999, ge=0, lt=1, description="class-balanced loss")
    finetune_epochs: int = Field(5, ge=1, description="finetune: epochs on the meta set")
    finetune_lr_factor: float = Field(0.1, gt=0)


class TrainConfig(_Strict):
    method: Method
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    meta: MetaConfig = MetaConfig()
    loss: LossConfig = LossConfig()
    methodology: str | None = Field(None, description="apply: the artifact directory")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(200, ge=1, description="steps between mid-epoch checkpoints")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        needs_meta = self.method == "finetune" or (
            self.method in META_METHODS and "clean" in self.meta.objective
        )
        if needs_meta and self.data.meta_per_class is None and self.data.meta_size is None:
            what = (
                "method finetune"
                if self.method == "finetune"
                else (f"meta.objective '{self.meta.objective}'")
            )
            raise ValueError(
                f"{what} needs a clean meta set: set data.meta_per_class (e.g. 10), or use "
                "meta.objective dac or selected"
            )
        if self.method == "apply" and not self.methodology:
            raise ValueError("method apply needs methodology: the path of a saved artifact")
        return self

    @property
    def is_meta(self) -> bool:
        return self.method in META_METHODS


def parse_train_config(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SlemError(f"config file '{p}' does not exist")
    try:
        values = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SlemError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise SlemError(f"{p} must hold a mapping of config fields, not {type(values).__name__}")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` overrides; values are parsed as YAML (numbers, booleans, lists)."""
    out = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SlemError(f"--set '{item}' must look like key=value, e.g. optim.lr=0.1")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise SlemError(f"--set {key}: '{part}' is not a section")
            node[part] = dict(child)
            node = node[part]
        node[parts[-1]] = value
    return out
