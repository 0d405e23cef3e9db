"""Fashion-MNIST (Xiao et al. 2017) read from the standard IDX ``.gz`` files.

Lookup order for the directory: the explicit ``data_dir`` (CLI ``--data-dir``), then
``$SLEM_DATA`` (the directory itself or its ``fashion-mnist`` subdirectory), then the location
of the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from slem.data.dataset import Dataset
from slem.errors import DataNotFoundError, SlemError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32}


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Directories searched, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    env = os.environ.get("SLEM_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    dirs.append(DEBIAN_DIR)
    return dirs


def find_dir(data_dir: str | Path | None = None) -> Path | None:
    for d in candidate_dirs(data_dir):
        if all((d / f).is_file() for f in FILES.values()):
            return d
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SlemError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]]).newbyteorder(">")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SlemError(
            f"{path}: truncated IDX file ({len(raw) - header} data bytes, expected {expected})"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """60,000 training and 10,000 test images (1, 28, 28) scaled to [0, 1], 10 classes."""
    found = find_dir(data_dir)
    if found is None:
        searched = ", ".join(str(d) for d in candidate_dirs(data_dir))
        raise DataNotFoundError(
            "Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) not found in "
            f"{searched}; install them with 'apt-get install dataset-fashion-mnist' or pass "
            "--data-dir / set SLEM_DATA to a directory holding the four .gz files"
        )
    arrays = {key: read_idx(found / fname) for key, fname in FILES.items()}

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset(
        name="fashion-mnist",
        X=images(arrays["train_images"]),
        y=arrays["train_labels"].astype(np.int64),
        X_test=images(arrays["test_images"]),
        y_test=arrays["test_labels"].astype(np.int64),
        task_type="classification",
        source=f"Fashion-MNIST IDX files in {found}",
        license="MIT (Zalando Research)",
        class_names=CLASS_NAMES,
        notes=("pixel values scaled from 0..255 to 0..1",),
    )
