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
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from slem._version import __version__
from slem.errors import SlemError
from slem.rundir import atomic_write_bytes

FORMAT = "slem-methodology"
FORMAT_VERSION = 1
WEIGHTS_FILE = "methodology.safetensors"
META_FILE = "methodology.json"

REGISTRY: dict[str, type[Methodology]] = {}


class Methodology(nn.Module, metaclass=ABCMeta):
    """Base of every learned methodology; subclasses set ``kind`` and ``input_features``."""

    kind: ClassVar[str] = ""
    input_features: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            REGISTRY[cls.kind] = cls

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this methodology (JSON-serializable)."""

    def save(self, directory: str | Path, **info: Any) -> Path:
        """Write the artifact; ``info`` (e.g. ``meta_trained_on=...``) is stored in the JSON."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # not safetensors' save_file, which creates 0600 files: the user's umask decides
        atomic_write_bytes(path / WEIGHTS_FILE, safetensors_bytes(tensors))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config(),
            "input_features": list(self.input_features),
            "slem_version": __version__,
            "torch_version": str(torch.__version__),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **info,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return path


def read_artifact_info(directory: str | Path) -> dict[str, Any]:
    """The artifact's JSON, validated; a one-line error says what is wrong."""
    path = Path(directory)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise SlemError(
            f"'{path}' is not a methodology artifact (no {META_FILE}); pass the 'methodology' "
            "directory of a slem train run"
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise SlemError(f"{meta_path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if meta.get("format") != FORMAT:
        raise SlemError(f"{meta_path} is not a slem methodology (format {meta.get('format')!r})")
    if meta.get("kind") not in REGISTRY:
        raise SlemError(
            f"{meta_path}: unknown methodology kind {meta.get('kind')!r}; known: "
            + ", ".join(sorted(REGISTRY))
        )
    return meta


def load_methodology(directory: str | Path) -> tuple[Methodology, dict[str, Any]]:
    """Rebuild a saved methodology; returns it (in eval mode) and its JSON metadata."""
    meta = read_artifact_info(directory)
    weights_path = Path(directory) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SlemError(f"'{directory}' has no {WEIGHTS_FILE}")
    module = REGISTRY[meta["kind"]](**meta.get("config", {}))
    try:
        module.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise SlemError(
            f"{weights_path} does not match its JSON config: {str(exc).splitlines()[0]}"
        ) from None
    module.eval()
    return module, meta
