"""Where a result came from: library versions, the git revision of the code, the time.

Every record slem writes (a run's ``config.yaml``, a study's ``hpo.yaml``, a methodology
artifact, a benchmark row) carries :func:`provenance`, so a number can be traced to the code
and the versions that produced it.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slem._version import __version__


def git_revision() -> str:
    """The commit of the slem source tree (with ``-dirty`` when tracked files are modified),
    or ``unknown`` outside a git checkout (an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """``slem``, ``torch``, ``numpy`` and ``python`` versions, ``git_revision`` and the UTC
    time ``created`` (JSON-ready strings)."""
    return {
        "slem": __version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
