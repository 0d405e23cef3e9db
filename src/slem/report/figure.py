"""Writing matplotlib figures: the Agg backend (no display needed) and :func:`save_figure`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write as PNG and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
