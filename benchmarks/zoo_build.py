"""Build (or rebuild) an entry of the pretrained-methodology zoo, ``src/slem/zoo/NAME/``.

    python benchmarks/zoo_build.py NAME [--threads 1] [--run-dir DIR] [--quiet]
    python benchmarks/zoo_build.py NAME --card-only

Runs ``slem meta-train`` on the entry's ``config.yaml`` into a run directory (default
``runs/zoo-build/NAME-<time>``), copies the artifact (``methodology.safetensors`` +
``methodology.json``) into the package, writes the model card ``card.json`` (the facts: the
family from the config; distinct tasks, episodes, meta steps and meta-training seconds from the
run's ``summary.json`` and ``episodes.jsonl``; the artifact's kind, inputs and the sha256 of
its weights; the slem version; the command that rebuilds it; the held-out results), renders
``README.md`` from it (:func:`slem.zoo.cards.render_markdown`) and the docs page ``docs/zoo.md``
(``benchmarks/report.py zoo``).

Held-out results are read from ``benchmarks/results/transfer/*.json`` (written by
``benchmarks/transfer.py``): the summary rows whose ``method`` (or ``rule``) is ``NAME`` or
``zoo:NAME``, with ERM's row of the same task as the reference; absent, the card says "not
measured yet". ``--card-only`` rewrites the card, README and docs from the entry as it is
(e.g. after ``transfer.py`` measured it) without meta-training.

The weights are deterministic: the same config (its ``train.seed``) and thread count give the
same bytes of ``methodology.safetensors``. A new entry is a directory with a ``config.yaml``
(any method ``slem meta-train`` accepts) and a first build with ``--purpose`` and
``--description`` (kept in the card for later rebuilds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import add_threads_option
from slem import zoo
from slem.cli.meta_train_cmd import meta_train
from slem.errors import SlemError
from slem.methodology import read_artifact_info
from slem.train.config import load_yaml
from slem.train.cross_task import parse_cross_task_config
from slem.zoo.cards import NOT_MEASURED, missing_fields, render_markdown

ROOT = Path(__file__).resolve().parent.parent
TRANSFER = ROOT / "benchmarks" / "results" / "transfer.json"
ARTIFACT_FILES = ("methodology.safetensors", "methodology.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def held_out(name: str, path: Path = TRANSFER) -> dict[str, Any]:
    """The entry's held-out results, from ``benchmarks/transfer.py``'s ``transfer.json``: the
    rule named ``NAME`` or ``zoo:NAME`` there (``--rule NAME=src/slem/zoo/NAME``), its
    summary rows and the issue's targets; or a note that it is not measured yet."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"note": NOT_MEASURED, "headline": None, "rows": []}
    rule = next((r for r in (name, f"zoo:{name}") if r in doc.get("targets", {})), None)
    if rule is None:
        return {"note": NOT_MEASURED, "headline": None, "rows": []}
    rows = [r for r in doc.get("summary", []) if r.get("method") == f"rule:{rule}"]
    checks = {c["target"]: c for c in doc["targets"][rule]}
    seeds = sorted({r["seeds"] for r in rows})

    def value(prefix: str) -> float | None:
        found = [c for t, c in checks.items() if t.startswith(prefix)]
        return found[0]["value"] if found else None

    seeds_text = f", {'/'.join(map(str, seeds))} seeds)" if seeds else ")"
    parts = []
    family = doc.get("rules_info", {}).get(rule, {}).get("family", ":0.4")
    if ":0.4" not in family:  # not a label-noise rule: its clean long-tail cells
        memo, short = (
            _long_tail_gain(doc, rule, "memorization"),
            _long_tail_gain(doc, rule, "short"),
        )
        if memo is not None and short is not None:
            parts.append(
                f"on clean 1:10 long tails {short:+.1f} points vs ERM in the short regime, "
                f"{memo:+.1f} in the long one (final test accuracy, 4 held-out tasks{seeds_text}"
                "; not a label-noise rule: its rows under noise are on the transfer page"
            )
    else:
        memo, short = value("(a) rule - ERM, memorization"), value("(a) rule - ERM, short")
        if memo is not None and short is not None:
            parts.append(
                f"{memo:+.1f} points vs ERM when ERM memorizes, {short:+.1f} in the short "
                f"regime (final test accuracy, 4 held-out tasks x 3 kinds of 40% noise" + seeds_text
            )
        collapse = next((c for t, c in checks.items() if t.startswith("(c)")), None)
        if collapse is not None and collapse.get("value") is not None:
            parts.append(
                f"{collapse['value']:.0f} of {collapse['cells']} runs more than 1 point below ERM"
            )
    return {
        "source": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "headline": "; ".join(parts) or f"{len(rows)} held-out rows",
        "seeds": seeds,
        "targets": list(checks.values()),
        "rows": rows,
    }


def _long_tail_gain(doc: dict[str, Any], rule: str, regime: str) -> float | None:
    """Mean over the long-tail cells of ``regime`` of the rule's final test accuracy minus
    ERM's, in points (None without such cells)."""
    at = {(e["regime"], e["task"], e["corruption"], e["method"]): e for e in doc["summary"]}
    gains = [
        100 * (at[k]["test_accuracy"] - at[(*k[:3], "erm")]["test_accuracy"])
        for k in at
        if k[0] == regime
        and k[2].startswith("lt")
        and k[3] == f"rule:{rule}"
        and (*k[:3], "erm") in at
    ]
    return statistics.fmean(gains) if gains else None


def _family(config_path: Path) -> tuple[dict[str, Any], int, int]:
    """The family of the entry's config (noise as ``KIND:RATE``), its number of distinct
    tasks and the config's seed."""
    cfg = parse_cross_task_config(load_yaml(config_path))
    t = cfg.tasks
    family = {
        "datasets": list(t.datasets),
        "noise": [str(n) if n is not None else "none" for n in t.noise],
        "imbalance": list(t.imbalance),
        "size": list(t.size),
        "meta_per_class": t.meta_per_class,
        "seed": t.seed,
    }
    return family, t.n_distinct, cfg.train.seed


def _applies_with(training: dict[str, Any]) -> str:
    """How a frozen application trains (the meta-training episodes' model and optimizer)."""
    model, optim = training.get("model", {}), training.get("optim", {})
    if training.get("method") == "lr_schedule":  # the rate is the schedule's, not optim.lr
        return (
            f"{model.get('arch')} width {model.get('width')} depth {model.get('depth')} "
            "(architecture re-chosen for the new inputs), "
            f"{optim.get('optimizer')} momentum {optim.get('momentum')} at the learned rate, "
            f"{optim.get('epochs')} epochs, batch {optim.get('batch_size')}"
        )
    return (
        f"{model.get('arch')} width {model.get('width')} depth {model.get('depth')} "
        "(architecture re-chosen for the new inputs), "
        f"{optim.get('optimizer')} lr {optim.get('lr')} ({optim.get('schedule')}), "
        f"{optim.get('epochs')} epochs, batch {optim.get('batch_size')}"
    )


def _distinct_seen(run_dir: Path) -> int:
    """Distinct tasks (dataset, corruption, imbalance, size) among the finished episodes."""
    lines = (run_dir / "episodes.jsonl").read_text().splitlines()
    return len({json.loads(line)["task"].rsplit(" (seed", 1)[0] for line in lines if line})


def write_card(name: str, facts: dict[str, Any], keep: dict[str, Any]) -> dict[str, Any]:
    """Write ``card.json`` and ``README.md`` of entry ``name`` from the run's ``facts`` (or
    ``keep``, the old card, for what was not re-measured)."""
    entry = zoo.ZOO_DIR / name
    meta = read_artifact_info(entry)
    weights = entry / "methodology.safetensors"
    family, n_distinct, seed = _family(entry / zoo.CONFIG_FILE)
    card: dict[str, Any] = {
        "name": name,
        "purpose": keep["purpose"],
        "description": keep["description"],
        "kind": meta["kind"],
        "methodology_config": meta.get("config", {}),
        "inputs": meta.get("input_features", []),
        "weights": {
            "file": weights.name,
            "bytes": weights.stat().st_size,
            "sha256": sha256(weights),
        },
        "entry_bytes": sum(
            (entry / f).stat().st_size for f in ARTIFACT_FILES if (entry / f).is_file()
        ),
        "family": family,
        "distinct_tasks": n_distinct,
        **{k: facts.get(k, keep.get(k)) for k in ("distinct_tasks_seen", "episodes")},
        **{k: facts.get(k, keep.get(k)) for k in ("meta_steps", "tasks_per_step")},
        "meta_training_seconds": facts.get(
            "meta_training_seconds", keep.get("meta_training_seconds")
        ),
        "build_threads": facts.get("build_threads", keep.get("build_threads")),
        "episode_test_accuracy_mean": facts.get(
            "episode_test_accuracy_mean", keep.get("episode_test_accuracy_mean")
        ),
        "seed": seed,
        "applies_with": _applies_with(meta.get("training_config") or {}),
        "held_out": held_out(name),
        "slem_version": meta.get("slem_version"),
        "torch_version": meta.get("torch_version"),
        "git_revision": (meta.get("provenance") or {}).get("git_revision"),
        "build_seconds": facts.get("build_seconds", keep.get("build_seconds")),
        "built": facts.get("built", keep.get("built")),
        "rebuild": facts.get("rebuild", keep.get("rebuild")),
    }
    missing = missing_fields(card)
    if missing:
        raise SlemError(f"card of {name} lacks {', '.join(missing)}")
    (entry / zoo.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (entry / zoo.README_FILE).write_text(render_markdown(card))
    return card


def build(name: str, run_dir: Path | None, threads: int | None, quiet: bool) -> dict[str, Any]:
    """Meta-train entry ``name`` from its config and copy the artifact into the package;
    returns the facts of the run for the card."""
    entry = zoo.ZOO_DIR / name
    config = entry / zoo.CONFIG_FILE
    if not config.is_file():
        raise SlemError(f"{config} does not exist; write the entry's meta-train config first")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir or ROOT / "runs" / "zoo-build" / f"{name}-{stamp}"
    start = time.perf_counter()
    meta_train(config, out=run_dir, threads=threads, quiet=quiet)
    wall = time.perf_counter() - start
    for f in ARTIFACT_FILES:
        shutil.copyfile(run_dir / "methodology" / f, entry / f)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "episodes": {
            "started": summary["episodes_started"],
            "finished": summary["episodes_finished"],
        },
        "distinct_tasks_seen": _distinct_seen(run_dir),
        "meta_steps": summary["meta_steps"],
        "tasks_per_step": parse_cross_task_config(load_yaml(config)).tasks_per_step,
        "meta_training_seconds": summary["seconds"],
        "build_seconds": round(wall, 1),
        "build_threads": threads,
        "episode_test_accuracy_mean": summary["episode_test_accuracy_mean"],
        "built": dt.datetime.now(dt.UTC).date().isoformat(),
        "run_dir": str(run_dir),
        "rebuild": f"python benchmarks/zoo_build.py {name}"
        + (f" --threads {threads}" if threads else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("name", help="the entry: a directory of src/slem/zoo with config.yaml")
    parser.add_argument("--run-dir", type=Path, default=None, help="the meta-train run dir")
    parser.add_argument("--card-only", action="store_true", help="no meta-training")
    parser.add_argument("--purpose", help="what it is for (first build of a new entry)")
    parser.add_argument("--description", help="one paragraph (first build of a new entry)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    entry = zoo.ZOO_DIR / args.name
    old = entry / zoo.CARD_FILE
    keep: dict[str, Any] = json.loads(old.read_text()) if old.is_file() else {}
    for key in ("purpose", "description"):
        if getattr(args, key):
            keep[key] = getattr(args, key)
        if not keep.get(key):
            parser.error(f"--{key}: the first build of an entry needs it")
    try:
        if args.card_only:
            facts: dict[str, Any] = {}
        else:
            facts = build(args.name, args.run_dir, args.threads, args.quiet)
        card = write_card(args.name, facts, keep)
    except SlemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    report.main(["zoo"])
    print(
        f"zoo:{args.name}: {card['kind']}, {card['weights']['bytes']} bytes, sha256 "
        f"{card['weights']['sha256'][:16]}…"
        + (f", built in {facts['build_seconds']} s ({facts['run_dir']})" if facts else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
