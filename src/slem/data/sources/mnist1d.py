"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package.

Only the generator (``make_dataset``) is used, never the package's download path, so the data
is reproducible offline from ``(n_samples, seed)``.
"""

from __future__ import annotations

import numpy as np

from slem.data.dataset import Dataset

DEFAULT_SIZE = 10_000
DEFAULT_SEED = 42


def load_mnist1d(n_samples: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Dataset:
    """Generate ``n_samples`` signals of length 40 (80% pool, 20% official test), 10 classes.

    The samples come out as ``(n, 1, 40)`` so 1-D CNNs can use them directly.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(n_samples)
    args.seed = int(seed)
    # the generator seeds NumPy's global RNG; keep the caller's global state intact
    state = np.random.get_state()  # noqa: NPY002 - the generator only knows the legacy RNG
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return Dataset(
        name="mnist1d",
        X=np.asarray(data["x"], dtype=np.float32)[:, None, :],
        y=np.asarray(data["y"], dtype=np.int64),
        X_test=np.asarray(data["x_test"], dtype=np.float32)[:, None, :],
        y_test=np.asarray(data["y_test"], dtype=np.int64),
        task_type="classification",
        source=f"mnist1d.make_dataset(num_samples={n_samples}, seed={seed}), generated locally",
        license="Apache-2.0 (mnist1d package)",
        class_names=tuple(str(i) for i in range(10)),
    )
