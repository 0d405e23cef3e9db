"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package.

Only the generator (``make_dataset``) is used, never the package's download path, so the data
is reproducible offline from ``(n_samples, seed)``. Generating takes seconds, so the arrays are
kept on disk (``$SLEM_CACHE_DIR``, default ``~/.cache/slem``; one ``.npz`` per size, seed and
``mnist1d`` version, written atomically; unwritable or damaged: generated again) and in memory.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np

from slem.data.dataset import Dataset

DEFAULT_SIZE = 10_000
DEFAULT_SEED = 42


def load_mnist1d(n_samples: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Dataset:
    """Generate ``n_samples`` signals of length 40 (80% pool, 20% official test), 10 classes.

    The samples come out as ``(n, 1, 40)`` so 1-D CNNs can use them directly. The generator
    takes seconds; the last few ``(n_samples, seed)`` are kept in memory (a meta-training run
    draws many tasks from one dataset), and every call returns its own copies.
    """
    x, y, x_test, y_test = _generate(int(n_samples), int(seed))
    return Dataset(
        name="mnist1d",
        X=x.copy(),
        y=y.copy(),
        X_test=x_test.copy(),
        y_test=y_test.copy(),
        task_type="classification",
        source=f"mnist1d.make_dataset(num_samples={n_samples}, seed={seed}), generated locally",
        license="Apache-2.0 (mnist1d package)",
        class_names=tuple(str(i) for i in range(10)),
    )


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_KEYS = ("x", "y", "x_test", "y_test")


@lru_cache(maxsize=4)
def _generate(n_samples: int, seed: int) -> Arrays:
    path = _cache_file(n_samples, seed)
    arrays = _read(path) or _make(n_samples, seed)
    if not path.is_file():
        _write(path, arrays)
    for a in arrays:
        a.flags.writeable = False  # the cached originals; callers get copies
    return arrays


def _cache_file(n_samples: int, seed: int) -> Path:
    root = Path(os.environ.get("SLEM_CACHE_DIR") or Path.home() / ".cache" / "slem")
    return root / f"mnist1d-{n_samples}-{seed}-v{version('mnist1d')}.npz"


def _read(path: Path) -> Arrays | None:
    try:
        with np.load(path) as data:
            x, y, x_test, y_test = (np.array(data[k]) for k in _KEYS)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing or damaged
        return None
    if x.ndim != 3 or len(x) != len(y) or len(x_test) != len(y_test):
        return None
    return x, y, x_test, y_test


def _write(path: Path, arrays: Arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            x, y, x_test, y_test = arrays
            np.savez(fh, x=x, y=y, x_test=x_test, y_test=y_test)
        os.replace(tmp, path)
    except OSError:  # a read-only home: generate every time, as before
        return


def _make(n_samples: int, seed: int) -> Arrays:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_samples
    args.seed = seed
    # the generator seeds NumPy's global RNG; keep the caller's global state intact
    state = np.random.get_state()  # noqa: NPY002 - the generator only knows the legacy RNG
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return (
        np.asarray(data["x"], dtype=np.float32)[:, None, :],
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32)[:, None, :],
        np.asarray(data["y_test"], dtype=np.int64),
    )
