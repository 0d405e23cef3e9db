"""Reading back the files a run writes, with one-line errors for damaged ones.

Every file slem reads back from a run directory (``checkpoint.pt``, ``meta_checkpoint.pt``,
``config.yaml``) goes through here, so a truncated, emptied or foreign file is a
:class:`~slem.errors.SlemError` that names the file and what to do, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from slem.errors import SlemError
from slem.train.distributed import gather, on_main, ranks


def damaged(path: Path, problem: str, fix: str) -> SlemError:
    """The one error for an unreadable file: what it is, what is wrong, what to do."""
    detail = " ".join(problem.split())
    if len(detail) > 120:  # torch's messages run on; their first sentence says enough
        detail = detail.split(". ")[0][:120]
    return SlemError(f"{path} is damaged or not a slem file ({detail}); {fix}")


def read_checkpoint(
    path: str | Path, map_location: torch.device | str = "cpu", keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Load a checkpoint written by ``torch.save`` of a state dict.

    Args:
        path: the checkpoint file.
        map_location: where its tensors go.
        keys: entries the checkpoint must hold.

    On several ranks rank 0 reads the file (only its machine needs it) and every rank gets
    its own part (:func:`save_atomic`); an error is raised on every rank.

    Raises:
        SlemError: the file is missing, unreadable, or lacks ``keys``; it was written by a
            run on another number of ranks.
    """
    p = Path(path)
    if ranks().active:
        state = on_main(lambda: _read_whole(p, "cpu"))
    else:
        state = _read_whole(p, map_location)
    state = _own_part(state, p)
    missing = [k for k in keys if k not in state]
    if missing:
        fix = f"delete {p.name} to start the run over, or restore the file from a copy"
        raise damaged(p, "missing " + ", ".join(missing), fix)
    return state


def _read_whole(p: Path, map_location: torch.device | str) -> dict[str, Any]:
    fix = f"delete {p.name} to start the run over, or restore the file from a copy"
    if not p.is_file():
        raise SlemError(f"no checkpoint at '{p}'; nothing to resume")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many kinds (zip, pickle, EOF, RuntimeError) here
        raise damaged(p, f"{type(exc).__name__}: {exc}", fix) from None
    if not isinstance(state, dict):
        raise damaged(p, f"holds a {type(state).__name__}, not a checkpoint", fix)
    return state


def load_checkpoint_into(
    path: Path,
    load_state: Callable[[dict[str, Any]], None],
    device: torch.device | str,
    keys: Sequence[str],
) -> None:
    """Read ``path`` (:func:`read_checkpoint`) and hand it to ``load_state``; a state that
    does not fit the run (another model or method) is a one-line SlemError naming the file."""
    state = read_checkpoint(path, device, keys=tuple(keys))
    try:
        load_state(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise damaged(
            path,
            f"does not match this run's config: {type(exc).__name__} {first}",
            "resume with the config the run was started with, or delete the checkpoint "
            "to start over",
        ) from None


def read_yaml_mapping(path: str | Path, fix: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a run's ``config.yaml``).

    Raises:
        SlemError: the file is unreadable, not YAML, or not a mapping.
    """
    p = Path(path)
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(p, f"{type(exc).__name__}: {exc}", fix) from None
    except yaml.YAMLError as exc:
        raise damaged(p, f"not valid YAML: {str(exc).splitlines()[0]}", fix) from None
    if not isinstance(values, dict):
        raise damaged(p, f"holds a {type(values).__name__}, not a mapping of config fields", fix)
    return values


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random states a run draws from: its own ``generator``, torch's CPU and CUDA."""
    return {
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore :func:`rng_state` (RNG states are CPU byte tensors, whatever map_location moved
    them to)."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def _own_part(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """This rank's state in a checkpoint of a run on several ranks (:func:`save_atomic`)."""
    r = ranks()
    saved = state.get(RANKS_KEY)
    if saved is None:
        if r.active:
            raise SlemError(
                f"{path} was written by a run on one process; resume it without torchrun "
                "(or --nproc)"
            )
        return state
    if len(saved) != r.size:
        raise SlemError(
            f"{path} was written by a run on {len(saved)} ranks, this one has {r.size}; "
            f"resume with --nproc {len(saved)} (torchrun --nproc-per-node x --nnodes = "
            f"{len(saved)})"
        )
    own: dict[str, Any] = saved[r.rank]
    return own


#: where a checkpoint of a run on several ranks keeps the list of their states
RANKS_KEY = "ranks"


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename: a kill during the write leaves
    the previous checkpoint intact. On several ranks (a collective: every rank calls it at
    the same step) rank 0 gathers every rank's ``state`` and writes them as one file; the
    other ranks write nothing."""
    path = Path(path)
    if ranks().active:
        states = gather(state)
        if states is None:
            return path
        state = {RANKS_KEY: states}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path
