"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015) read straight from its zip files.

Two sources, both from the official distribution (MIT licence):

- ``images_background_small1.zip`` (5 alphabets, 136 characters) and
  ``images_background_small2.zip`` (5 alphabets, 156 characters), 20 drawings per character,
  as a :class:`~slem.data.episodes.ClassImages` pool (:func:`load_omniglot`). The two sets
  share the Greek and Latin alphabets (50 characters, identical images); to meta-train on one
  and meta-test on the other, first drop those from one side, e.g.
  ``pool.subset([i for i, n in enumerate(pool.class_names) if n.split("/")[0] not in
  ("Greek", "Latin")])``.
- ``all_runs.zip``: the 20 runs of Lake et al.'s 20-way one-shot classification task, as
  :class:`~slem.data.episodes.Episodes` (:func:`load_omniglot_runs`).

Images are decoded in memory (nothing is extracted to disk): the 105x105 binary PNGs (black
ink on white) become grayscale, are resized to ``image_size`` with Lanczos antialiasing, and
are inverted so ink is 1.0 and background 0.0; float32, shape ``(1, s, s)``.

Directory lookup: the explicit ``data_dir`` (CLI ``--data-dir``), else ``$SLEM_DATA``; in
either, the directory itself or its ``omniglot`` subdirectory. A directory the caller names
is used, never silently another copy.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from slem.data.episodes import ClassImages, Episodes
from slem.errors import DataNotFoundError, SlemError

SPLITS = {
    "small1": "images_background_small1.zip",
    "small2": "images_background_small2.zip",
}
RUNS_FILE = "all_runs.zip"


def find_file(filename: str, data_dir: str | Path | None = None) -> Path:
    """The path of an Omniglot zip: in ``data_dir`` (or ``$SLEM_DATA``) or its ``omniglot``
    subdirectory. Raises :class:`~slem.errors.DataNotFoundError` naming what was searched."""
    how = f"pass --data-dir DIR (the directory holding {filename}) or set SLEM_DATA"
    if data_dir is not None:
        base, origin = Path(data_dir), "--data-dir"
    else:
        env = os.environ.get("SLEM_DATA")
        if not env:
            raise DataNotFoundError(
                f"Omniglot file {filename} not found: no data directory given and SLEM_DATA "
                f"is not set; {how}"
            )
        base, origin = Path(env), "SLEM_DATA"
    if not base.is_dir():
        raise DataNotFoundError(
            f"Omniglot directory {base} ({origin}) does not exist or is not a directory; {how}"
        )
    for d in (base, base / "omniglot"):
        if (d / filename).is_file():
            return d / filename
    raise DataNotFoundError(
        f"Omniglot file {filename} not found in {base} ({origin}) nor in {base / 'omniglot'}; {how}"
    )


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise SlemError(f"image_size must be a positive number of pixels, got {image_size!r}")
    return image_size


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SlemError(f"{path} is not a readable zip file ({exc}); download it again") from exc


def _decode(archive: zipfile.ZipFile, path: Path, member: str, size: int) -> np.ndarray:
    """One PNG of the zip as ``(size, size)`` uint8 grayscale (white background)."""
    from PIL import Image  # imported here: ``import slem.data`` stays light

    try:
        raw = archive.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise SlemError(
            f"{path} is damaged: {member} cannot be read ({exc}); download it again"
        ) from exc
    try:
        with Image.open(io.BytesIO(raw)) as im:
            gray = im.convert("L")
    except (OSError, SyntaxError, ValueError) as exc:
        raise SlemError(
            f"{path}: {member} is not a readable image ({exc}); download the zip again"
        ) from exc
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    """``(n, 1, s, s)`` float32 with ink 1.0: the grayscale PNGs are white (255) background."""
    gray = np.stack(images).astype(np.float32)
    return torch.from_numpy(1.0 - gray[:, None] / 255.0)


def load_omniglot(
    data_dir: str | Path | None, split: str = "small1", image_size: int = 28
) -> ClassImages:
    """A small Omniglot background set as a pool of ``(1, s, s)`` images, one class per character.

    ``split``: ``"small1"`` (136 characters of Balinese, Early Aramaic, Greek, Korean,
    Latin) or ``"small2"`` (156 of Greek, Japanese katakana, Latin, Sanskrit, Tagalog); 20
    images per character (the two share Greek and Latin: see the module docstring). Classes
    are named ``"Alphabet/characterNN"`` and sorted by name, images within a class by file
    name. Ink is 1.0, background 0.0 (see the module docstring). Rotations as extra classes:
    :meth:`ClassImages.with_rotations`, after any :meth:`ClassImages.split_classes`.

    Raises :class:`~slem.errors.DataNotFoundError` when the zip is not found (see
    :func:`find_file`), :class:`~slem.errors.SlemError` for an unknown ``split``, a bad
    ``image_size``, or a damaged zip.
    """
    if split not in SPLITS:
        raise SlemError(f"Omniglot split must be 'small1' or 'small2', got '{split}'")
    size = _check_size(image_size)
    path = find_file(SPLITS[split], data_dir)
    prefix = SPLITS[split].removesuffix(".zip")
    with _open(path) as archive:
        by_class: dict[str, list[str]] = {}
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) == 4 and parts[0] == prefix and parts[3].lower().endswith(".png"):
                by_class.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
        if not by_class:
            raise SlemError(
                f"{path} holds no images under {prefix}/ALPHABET/CHARACTER/; it is not the "
                "Omniglot file of that name, download it again"
            )
        names = sorted(by_class)
        members = [m for c in names for m in sorted(by_class[c])]
        images = [_decode(archive, path, m, size) for m in members]
    labels = np.repeat(np.arange(len(names)), [len(by_class[c]) for c in names])
    return ClassImages(_stack(images), torch.from_numpy(labels), names, f"omniglot-{split}")


_RUN = re.compile(r"run\d+")


def load_omniglot_runs(data_dir: str | Path | None, image_size: int = 28) -> list[Episodes]:
    """Lake et al. (2015)'s 20 runs of 20-way one-shot classification, one episode each.

    Each run of ``all_runs.zip`` has 20 training images (one per class) and 20 test items;
    ``class_labels.txt`` pairs each test item with its class's training image. A run becomes
    an :class:`Episodes` with one task: support ``(1, 20, 1, s, s)`` = the training images
    sorted by name, label = that index; query ``(1, 20, 1, s, s)`` = the test items with their
    training image's label, ordered by label (so ``query_y == arange(20)``, the class-by-class
    layout); ``info['query_item']`` ``(1, 20)`` holds each query's item number (``itemNN``).
    ``ways = 20``. Images are preprocessed as in :func:`load_omniglot`.

    Raises :class:`~slem.errors.DataNotFoundError` when ``all_runs.zip`` is not found,
    :class:`~slem.errors.SlemError` for a damaged zip or a run whose labels do not match its
    images.
    """
    size = _check_size(image_size)
    path = find_file(RUNS_FILE, data_dir)
    episodes = []
    with _open(path) as archive:
        files = set(archive.namelist())
        runs = sorted({m.split("/")[0] for m in files if _RUN.fullmatch(m.split("/")[0])})
        if not runs:
            raise SlemError(f"{path} holds no runNN/ directories; download all_runs.zip again")
        for run in runs:
            training = sorted(
                m for m in files if m.startswith(f"{run}/training/") and m.lower().endswith(".png")
            )
            label_of = {m: i for i, m in enumerate(training)}
            pairs = _read_pairs(archive, path, run)
            unknown = [t for q, t in pairs if t not in label_of] + [
                q for q, _ in pairs if q not in files
            ]
            if not training or not pairs or unknown:
                raise SlemError(
                    f"{path}: {run}/class_labels.txt names images the run does not hold "
                    f"({', '.join(unknown[:3]) or 'no pairs or no training images'}); "
                    "download all_runs.zip again"
                )
            pairs.sort(key=lambda p: (label_of[p[1]], p[0]))
            support = _stack([_decode(archive, path, m, size) for m in training])
            query = _stack([_decode(archive, path, q, size) for q, _ in pairs])
            items = [int(re.sub(r"\D", "", Path(q).stem) or -1) for q, _ in pairs]
            episodes.append(
                Episodes(
                    support_x=support[None],
                    support_y=torch.arange(len(training))[None],
                    query_x=query[None],
                    query_y=torch.tensor([label_of[t] for _, t in pairs])[None],
                    ways=len(training),
                    info={"query_item": torch.tensor(items)[None]},
                )
            )
    return episodes


def _read_pairs(archive: zipfile.ZipFile, path: Path, run: str) -> list[tuple[str, str]]:
    """``(test item, training image)`` member names from a run's ``class_labels.txt``."""
    member = f"{run}/class_labels.txt"
    try:
        text = archive.read(member).decode("utf-8")
    except KeyError as exc:
        raise SlemError(f"{path}: {member} is missing; download all_runs.zip again") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, UnicodeDecodeError) as exc:
        raise SlemError(
            f"{path} is damaged: {member} cannot be read ({exc}); download it again"
        ) from exc
    pairs = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            pairs.append((fields[0], fields[1]))
        elif fields:
            raise SlemError(
                f"{path}: {member} has a line that is not 'TEST_ITEM TRAINING_IMAGE': "
                f"{line.strip()!r}; download all_runs.zip again"
            )
    return pairs
