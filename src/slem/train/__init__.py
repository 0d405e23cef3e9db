"""Training: :class:`Trainer` (baselines, frozen methodologies), :class:`MetaTrainer`
(meta-learning a weighting methodology with the bilevel engine), ``ScheduleTrainer``
(MLR-SNet), the meta-training loops of the learned optimizer and the learned black-box
optimizer (:mod:`slem.train.learned_optimizer`, :mod:`slem.train.bbo`), callbacks and run
directories (:func:`train_run`).

For your own code: :class:`MetaWeighting` adds meta-learned sample weighting to your own
training loop; :func:`apply` trains on a new task with a saved, frozen methodology (what
``slem apply`` does); :func:`save_methodology` writes an artifact with its metadata."""

from slem.train.artifacts import save_methodology
from slem.train.callbacks import (
    Callback,
    CheckpointCallback,
    CsvLogger,
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
)
from slem.train.config import (
    LossConfig,
    MetaConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    parse_train_config,
)
from slem.train.guard import NonFiniteLoss, TrainingStopped
from slem.train.meta_test import apply, apply_config
from slem.train.meta_trainer import MetaTrainer
from slem.train.models import build_model
from slem.train.plugin import MetaWeighting
from slem.train.predict import TrainedModel, load_trained
from slem.train.record import RunRecord
from slem.train.run import read_run_config, train_run
from slem.train.trainer import Trainer, TrainResult, make_trainer

__all__ = [
    "Callback",
    "CheckpointCallback",
    "CsvLogger",
    "JsonlLogger",
    "LossConfig",
    "MetaConfig",
    "MetaTrainer",
    "MetaWeighting",
    "ModelConfig",
    "NonFiniteLoss",
    "OptimConfig",
    "ProgressBar",
    "RunRecord",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "Trainer",
    "TrainingStopped",
    "apply",
    "apply_config",
    "build_model",
    "load_trained",
    "make_trainer",
    "parse_train_config",
    "read_run_config",
    "save_methodology",
    "train_run",
]
