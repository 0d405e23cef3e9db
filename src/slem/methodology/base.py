"""The learning-methodology base class and its self-describing artifact.

A methodology ``h`` is a plain ``nn.Module`` with one documented hook into learning. Saved, it
is a directory holding ``methodology.safetensors`` (the weights) and ``methodology.json``:
its kind, the constructor arguments that rebuild it, the input features it reads, the class
groups it was trained with, the library and torch versions, and what it was meta-trained on.
:func:`load_methodology` rebuilds any registered kind from that directory alone.
"""

from __future__ import annotations

import datetime as dt
import json
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load, save
from torch import nn

from slem._version import __version__
from slem.errors import SlemError
from slem.rundir import atomic_write_bytes, atomic_write_text, make_run_dir
from slem.zoo import resolve as resolve_zoo

FORMAT = "slem-methodology"
FORMAT_VERSION = 1
WEIGHTS_FILE = "methodology.safetensors"
META_FILE = "methodology.json"

REGISTRY: dict[str, type[Methodology]] = {}


class Methodology(nn.Module, metaclass=ABCMeta):
    """Base of every learned methodology; subclasses set ``kind`` and ``input_features``."""

    kind: ClassVar[str] = ""
    input_features: ClassVar[tuple[str, ...]] = ()
    #: how to use an artifact of this kind when it is not applied in training (e.g. a CLI)
    used_with: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            REGISTRY[cls.kind] = cls

    def observed_inputs(self) -> tuple[str, ...]:
        """What this methodology reads (``input_features`` unless its config chooses)."""
        return tuple(self.input_features)

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this methodology (JSON-serializable)."""

    def save(self, directory: str | Path, **info: Any) -> Path:
        """Write the artifact; ``info`` is stored in the JSON. Write artifacts with
        :func:`slem.train.save_methodology`, which fills ``info`` the same way everywhere."""
        path = make_run_dir(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # weights first, JSON last and both atomic: a directory with a JSON is complete
        atomic_write_bytes(path / WEIGHTS_FILE, save(tensors))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config(),
            "input_features": list(self.observed_inputs()),
            "slem_version": __version__,
            "torch_version": str(torch.__version__),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **info,
        }
        atomic_write_text(path / META_FILE, json.dumps(meta, indent=2, default=str))
        return path


def artifact_dir(directory: str | Path) -> Path:
    """The artifact directory ``directory`` names: itself, the ``methodology/`` folder of a
    run directory (so ``slem apply RUN_DIR`` works as ``slem apply RUN_DIR/methodology``), or
    a shipped entry of the zoo for ``zoo:NAME`` (:mod:`slem.zoo`).

    Raises:
        SlemError: ``zoo:NAME`` with an unknown NAME (one line listing the available names).
    """
    path = resolve_zoo(directory)
    if not (path / META_FILE).is_file() and (path / "methodology" / META_FILE).is_file():
        return path / "methodology"
    return path


def _damaged(path: Path, problem: str) -> SlemError:
    detail = " ".join(problem.split())[:160]
    return SlemError(
        f"{path} is damaged ({detail}); re-create the artifact with the slem run that wrote "
        "it, or restore the file from a copy"
    )


def read_artifact_info(directory: str | Path) -> dict[str, Any]:
    """The artifact's JSON, validated; a one-line error says what is wrong."""
    path = artifact_dir(directory)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise SlemError(
            f"methodology artifact '{path}' does not exist; pass a slem run directory or its "
            "'methodology' directory"
        )
    if not meta_path.is_file():
        raise SlemError(
            f"'{path}' is not a methodology artifact (no {META_FILE}); pass a slem run "
            "directory that learned a methodology, or its 'methodology' directory"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _damaged(meta_path, f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(meta_path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise _damaged(meta_path, f"holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise SlemError(f"{meta_path} is not a slem methodology (format {meta.get('format')!r})")
    if meta.get("kind") not in REGISTRY:
        raise SlemError(
            f"{meta_path}: unknown methodology kind {meta.get('kind')!r}; known: "
            + ", ".join(sorted(REGISTRY))
        )
    return meta


def load_methodology(directory: str | Path) -> tuple[Methodology, dict[str, Any]]:
    """Rebuild a saved methodology (a directory, a run directory holding one, or ``zoo:NAME``
    for a shipped entry of :mod:`slem.zoo`); returns it (in eval mode) and its JSON
    metadata."""
    meta = read_artifact_info(directory)
    path = artifact_dir(directory)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SlemError(
            f"'{path}' has no {WEIGHTS_FILE}; re-create the artifact with the slem run that "
            "wrote it"
        )
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise _damaged(path / META_FILE, f"'config' is a {type(config).__name__}, not an object")
    try:
        module = REGISTRY[meta["kind"]](**config)
    except (TypeError, ValueError) as exc:
        raise _damaged(
            path / META_FILE, f"its config does not build a {meta['kind']}: {exc}"
        ) from None
    try:
        tensors = load(weights_path.read_bytes())
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
        raise _damaged(weights_path, f"{type(exc).__name__}: {exc}") from None
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        raise SlemError(
            f"{weights_path} does not match its JSON config: {str(exc).splitlines()[0]}; "
            "re-create the artifact with the slem run that wrote it"
        ) from None
    module.eval()
    return module, meta


def freeze(methodology: Methodology) -> Methodology:
    """``methodology`` in eval mode with every parameter frozen (``requires_grad=False``), as
    it is applied to a new task; returned for chaining."""
    for p in methodology.parameters():
        p.requires_grad_(False)
    return methodology.eval()


def load_frozen(directory: str | Path, kinds: tuple[str, ...] = ()) -> Methodology:
    """A saved methodology (a directory or ``zoo:NAME``), frozen (:func:`freeze`), ready to
    apply to a new task: e.g. a weighting rule, ``weights = rule(losses)`` (one weight in
    ``(0, 1)`` per loss; see :func:`slem.methodology.normalize_weights` for the trainer's
    rescaling). ``kinds``: the kinds the caller can use (e.g. ``("mwnet", "cmwnet",
    "cmwnet_sl")``; empty: any).

    Raises:
        SlemError: ``directory`` is not a complete, readable artifact (see
            :func:`load_methodology`), or its kind is not one of ``kinds``.
    """
    methodology = load_methodology(directory)[0]
    if kinds and methodology.kind not in kinds:
        raise SlemError(
            f"{directory} holds a '{methodology.kind}' methodology; this needs one of "
            f"{', '.join(kinds)}"
        )
    return freeze(methodology)
