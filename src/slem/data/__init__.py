"""The data layer: offline datasets, seeded corruptions, and :class:`Task`.

Typical use::

    from slem.data import DataConfig, build_task
    task = build_task(DataConfig(name="mnist1d", noise="symmetric:0.4", meta_per_class=10))
    X, y = task.train.tensors()
"""

from slem.data.arrays import task_from_arrays
from slem.data.config import DataConfig, NoiseSpec, parse_data_config
from slem.data.corruption import (
    Imbalance,
    LabelNoise,
    TargetNoise,
    instance_noise,
    long_tail,
    long_tail_counts,
    pairflip_noise,
    regression_noise,
    symmetric_noise,
    uniform_noise,
)
from slem.data.dataset import Dataset, TaskType
from slem.data.family import TaskFamily, parse_task_family
from slem.data.preprocess import Preprocessing
from slem.data.registry import BUILTIN, LoadOptions, load_dataset
from slem.data.task import (
    Normalizer,
    Split,
    Task,
    TaskFeatures,
    build_task,
    group_by_size,
    make_task,
)

__all__ = [
    "BUILTIN",
    "DataConfig",
    "Dataset",
    "Imbalance",
    "LabelNoise",
    "LoadOptions",
    "NoiseSpec",
    "Normalizer",
    "Preprocessing",
    "Split",
    "TargetNoise",
    "Task",
    "TaskFamily",
    "TaskFeatures",
    "TaskType",
    "build_task",
    "group_by_size",
    "instance_noise",
    "load_dataset",
    "long_tail",
    "long_tail_counts",
    "make_task",
    "pairflip_noise",
    "parse_data_config",
    "parse_task_family",
    "regression_noise",
    "symmetric_noise",
    "task_from_arrays",
    "uniform_noise",
]
