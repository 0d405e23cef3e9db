"""The data layer: offline datasets, seeded corruptions, and :class:`Task`.

Typical use::

    from slem.data import DataConfig, build_task
    task = build_task(DataConfig(name="mnist1d", noise="symmetric:0.4", meta_per_class=10))
    X, y = task.train.tensors()
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from slem.data.class_pools import class_pool
    from slem.data.episodes import (
        ClassImages,
        Episodes,
        EpisodeSampler,
        SeededSampler,
        SinusoidTasks,
        TaskSampler,
    )
    from slem.data.sources.omniglot import load_omniglot, load_omniglot_runs

#: the few-shot names (slem.data.episodes) need torch, which ``import slem.data`` does not
#: load: they are imported on first use
_LAZY = {
    "ClassImages": "slem.data.episodes",
    "EpisodeSampler": "slem.data.episodes",
    "Episodes": "slem.data.episodes",
    "SeededSampler": "slem.data.episodes",
    "SinusoidTasks": "slem.data.episodes",
    "TaskSampler": "slem.data.episodes",
    "class_pool": "slem.data.class_pools",
    "load_omniglot": "slem.data.sources.omniglot",
    "load_omniglot_runs": "slem.data.sources.omniglot",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'slem.data' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = [
    "BUILTIN",
    "ClassImages",
    "DataConfig",
    "Dataset",
    "EpisodeSampler",
    "Episodes",
    "Imbalance",
    "LabelNoise",
    "LoadOptions",
    "NoiseSpec",
    "Normalizer",
    "Preprocessing",
    "SeededSampler",
    "SinusoidTasks",
    "Split",
    "TargetNoise",
    "Task",
    "TaskFamily",
    "TaskFeatures",
    "TaskSampler",
    "TaskType",
    "build_task",
    "class_pool",
    "group_by_size",
    "instance_noise",
    "load_dataset",
    "load_omniglot",
    "load_omniglot_runs",
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
