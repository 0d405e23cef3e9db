"""Training: :class:`Trainer` (baselines, frozen methodologies), :class:`MetaTrainer`
(meta-learning a weighting methodology with the bilevel engine), ``ScheduleTrainer``
(MLR-SNet), the meta-training loops of the learned optimizer and the learned black-box
optimizer (:mod:`slem.train.learned_optimizer`, :mod:`slem.train.bbo`), callbacks and run
directories."""

from slem.train.callbacks import Callback, CheckpointCallback, JsonlLogger, ProgressBar
from slem.train.config import (
    LossConfig,
    MetaConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    parse_train_config,
)
from slem.train.models import build_model
from slem.train.record import RunRecord
from slem.train.run import read_run_config, train_run
from slem.train.trainer import (
    MetaTrainer,
    NonFiniteLoss,
    Trainer,
    TrainingStopped,
    TrainResult,
    make_trainer,
)

__all__ = [
    "Callback",
    "CheckpointCallback",
    "JsonlLogger",
    "LossConfig",
    "MetaConfig",
    "MetaTrainer",
    "ModelConfig",
    "NonFiniteLoss",
    "OptimConfig",
    "ProgressBar",
    "RunRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingStopped",
    "build_model",
    "make_trainer",
    "parse_train_config",
    "read_run_config",
    "train_run",
]
