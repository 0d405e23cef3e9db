"""Shared fixtures: tiny IDX files in Fashion-MNIST layout, and a CLI runner."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from slem.data.sources import fashion_mnist

REAL_FASHION_MNIST = fashion_mnist.find_dir() is not None


def write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


@pytest.fixture()
def tiny_fashion_dir(tmp_path: Path) -> Path:
    """A directory with 200 train / 50 test random 28x28 images in the official file layout."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 50)):
        write_idx(
            tmp_path / f"{split}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            tmp_path / f"{split}-labels-idx1-ubyte.gz",
            np.tile(np.arange(10, dtype=np.uint8), n // 10),
        )
    return tmp_path


@pytest.fixture()
def float64() -> Iterator[None]:
    """Run a test with float64 as torch's default dtype, restoring it afterwards."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _omniglot_dir() -> Path | None:
    """``../shared/data/omniglot`` beside the checkout (CI), or beside the main checkout when
    this is a git worktree; None when neither holds the files."""
    root = Path(__file__).resolve().parents[1]
    candidates = [root.parent / "shared" / "data" / "omniglot"]
    git = root / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):  # a worktree
        main = Path(git.read_text().split(":", 1)[1].strip()).resolve().parents[2]
        candidates.append(main.parent / "shared" / "data" / "omniglot")
    return next((d for d in candidates if (d / "images_background_small1.zip").is_file()), None)


OMNIGLOT = _omniglot_dir()


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The offline Omniglot zips (the test is skipped where they are absent)."""
    if OMNIGLOT is None:
        pytest.skip("Omniglot files not found at ../shared/data/omniglot")
    return OMNIGLOT


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def central_difference(f: Callable[[Any], float], h: Any, step: float = 1e-6) -> Any:
    """Central finite-difference gradient of a scalar function of the tensor ``h``."""
    import torch

    out = torch.zeros_like(h)
    for j in range(h.numel()):
        e = torch.zeros_like(h)
        e.view(-1)[j] = step
        out.view(-1)[j] = (f(h + e) - f(h - e)) / (2 * step)
    return out


def require_real_fashion_mnist() -> None:
    """Skip locally when the Debian package is absent, but fail in CI, where
    scripts/install.sh must have installed it."""
    if not REAL_FASHION_MNIST:
        if os.environ.get("CI"):
            pytest.fail(
                "Fashion-MNIST files missing in CI: scripts/install.sh did not install them"
            )
        pytest.skip("dataset-fashion-mnist not installed")
