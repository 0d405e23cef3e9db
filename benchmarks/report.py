"""Render the docs' result pages, ``docs/results/*.md``, from the benchmarks' committed results
in ``benchmarks/results/`` (their JSON summaries), without training anything.

    python benchmarks/report.py [PAGE ...] [--check]

A page is its template, ``benchmarks/pages/PAGE.md`` (the setup and the findings as prose),
with every ``{{name}}`` marker replaced by a table or value computed from the page's JSON;
the plots the pages show are copied next to them, to ``docs/results/img/``. ``--check`` writes
nothing and exits 1 when a page or plot differs from what it would write (a stale page, or one
edited by hand); ``tests/test_docs.py`` runs the same check. After a benchmark run has
rewritten its JSON, run this script and commit the pages with it.

Pages and their sources (all under ``benchmarks/results/``):

* ``noisy_labels``: ``noisy_labels/{mnist1d,fashion-mnist,transfer}.json``
  (``noisy_labels.py --json``)
* ``loss_setting``: ``loss_setting.json`` (written by ``loss_setting.py``)
* ``schedules``: ``schedules.json`` and ``schedules/lr_*.png`` (``schedules.py --json``)
* ``learned_optimizers``: ``learned_optimizers.json``, ``learned_optimizers/bbo_regret.png``
* ``hpo``: ``hpo.json`` and ``hpo_regret.png`` (written by ``hpo.py``)
* ``hypergrad``: ``hypergrad.json`` (``hypergrad.py --json``)
* ``data_layer``: ``data_layer.json`` (``data_layer.py --json``)
* ``cnn_speed``: ``cnn_speed.json`` (``cnn_speed.py --json``)
* ``fast_mode``: ``fast_mode.json`` (``fast_mode.py --json``)
* ``meta_cost``: ``meta_cost.json`` (``meta_cost.py --json``)
* ``zoo``: ``docs/zoo.md`` (not under results/), from the model cards
  ``src/slem/zoo/*/card.json`` (written by ``zoo_build.py``)
* ``transfer``: ``transfer.json`` (written by ``transfer.py``)
* ``distributed``: ``distributed.json`` (``distributed.py --json``) and
  ``distributed_dp.json`` (``distributed_dp.py``)
* ``estimators``: ``sklearn_estimators.json`` (written by ``sklearn_estimators.py``)
* ``few_shot``: ``few_shot.json`` (``few_shot.py --json``)
* ``nas``: ``nas.json`` (``nas.py --json``), ``nas/mnist1d_cells.json`` (``nas_cells.py``) and
  ``nas_blackbox.json`` (``nas_blackbox.py``)
* ``hpo_gradient``: ``hpo_gradient.json`` (written by ``hpo_gradient.py``)
* ``curves``: ``curves.json`` and ``curves/*.png`` (``curves.py --json``)

Only the standard library is used, so the pages render without torch or slem.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATES = ROOT / "benchmarks" / "pages"
OUT = ROOT / "docs" / "results"
ZOO = ROOT / "src" / "slem" / "zoo"
MARKER = re.compile(r"\{\{([^{}]+)\}\}")


# ---------------------------------------------------------------------- helpers


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sig(x: float, digits: int) -> str:
    """``x`` rounded to ``digits`` significant figures, never in scientific notation."""
    if x == 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{round(x, places):.{max(places, 0)}f}"


def pct(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def bold_best(
    cells: list[list[str]], values: list[list[float | None]], best: Callable[..., float]
) -> None:
    """Bold, in each column from the second on, the cells whose value is ``best`` (min/max)."""
    for col in range(1, len(cells[0])):
        present = [v[col] for v in values if v[col] is not None]
        if not present:
            continue
        top = best(present)
        for row, vals in zip(cells, values, strict=True):
            if vals[col] is not None and vals[col] == top:
                row[col] = f"**{row[col]}**"


def bold_best_rows(
    rows: list[list[str]], groups: list[str], values: list[float], col: int, best: Callable
) -> None:
    """Bold cell ``col`` of the rows whose value is ``best`` within their group."""
    for group in dict.fromkeys(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        top = best(values[i] for i in members)
        for i in members:
            if values[i] == top:
                rows[i][col] = f"**{rows[i][col]}**"


def fill(name: str, values: dict[str, str], sources: str = "benchmarks/results/") -> str:
    """The template of ``name`` with its markers replaced; every marker needs a value and
    every value a marker."""
    text = (TEMPLATES / f"{name}.md").read_text()
    markers = set(MARKER.findall(text))
    if markers != set(values):
        raise ValueError(
            f"template {name}.md: markers {sorted(markers)} but values {sorted(values)}"
        )
    text = MARKER.sub(lambda m: values[m.group(1)], text)
    title, _, body = text.partition("\n")
    note = (
        f"<!-- generated by `python benchmarks/report.py {name}` from benchmarks/pages/{name}.md "
        f"and {sources}; edit those, not this page -->"
    )
    return f"{title}\n\n{note}\n{body}"


# ---------------------------------------------------------------------- noisy labels


def noisy_table(summary: list[dict[str, Any]]) -> str:
    """The table of ``benchmarks/noisy_labels.py`` (mean ± std over seeds)."""
    rows = []
    for r in summary:
        auc = "–" if r["weight_auc"] is None else f"{r['weight_auc']:.3f}"
        ratio = "–" if r["meta_step_time_ratio"] is None else f"{r['meta_step_time_ratio']:.1f}x"
        rows.append(
            [
                r["dataset"],
                r["noise"],
                r["method"],
                str(r["seeds"]),
                pct(r["test_accuracy"], r["test_accuracy_std"]),
                pct(r["test_accuracy_at_best_val"], r["test_accuracy_at_best_val_std"]),
                auc,
                ratio,
            ]
        )
    header = [
        "dataset",
        "corruption",
        "method",
        "seeds",
        "final test acc (%)",
        "test acc at best val (%)",
        "weight AUC",
        "meta step / ERM step",
    ]
    return table(header, rows)


def noisy_labels() -> str:
    return fill(
        "noisy_labels",
        {
            "mnist1d": noisy_table(load("noisy_labels/mnist1d.json")["summary"]),
            "fashion-mnist": noisy_table(load("noisy_labels/fashion-mnist.json")["summary"]),
            "transfer": noisy_table(load("noisy_labels/transfer.json")["transfer"]),
        },
    )


# ---------------------------------------------------------------------- loss setting

#: (row label, method in the benchmark); ``{chosen}``: the value tuned per column,
#: ``{T}``: the transition error per column
CLS_ROWS = [
    ("ERM", "ERM"),
    ("GCE (q tuned: {chosen})", "GCE (tuned q)"),
    ("loss adjuster (per-sample GCE q, meta-learned)", "loss adjuster (GCE q per sample)"),
    ("loss adjuster + DAC-MR (no clean data at all)", "loss adjuster + DAC-MR (no meta set)"),
    ("forward correction, anchor-point T (T error {T})", "forward (anchor T)"),
    ("forward correction, true T (oracle)", "forward (true T, oracle)"),
    ("transition net (meta-learned T(x); T error {T})", "transition net"),
    ("transition net + DAC-MR (no clean data)", "transition net + DAC-MR (no meta set)"),
]
JOINT_ROWS = [
    ("MW-Net alone", "MW-Net alone"),
    ("loss adjuster alone", "loss adjuster alone"),
    (
        "MLR-SNet alone (learned online from scratch on the noisy run)",
        "MLR-SNet alone",
    ),
    ("MW-Net + loss adjuster", "MW-Net + loss adjuster (joint)"),
    ("MW-Net + loss adjuster + MLR-SNet", "MW-Net + loss adjuster + MLR-SNet (joint)"),
]
REG_TABLES = [
    ("diabetes", "diabetes"),
    ("Boston", "Boston (medv)"),
    ("concrete", "concrete"),
    ("bdims", "bdims (wgt)"),
]
REG_ROWS = [
    ("MSE", "mse"),
    ("L1", "l1"),
    ("Huber (delta tuned: {chosen})", "huber (tuned delta)"),
    ("HWNet, loss mixture (meta lr 0.01)", "hwnet"),
    ("HWNet, loss mixture (meta lr tuned: {chosen})", "hwnet (meta lr tuned)"),
    (
        "HWNet meta-learned on diabetes, applied frozen (no meta set)",
        "hwnet (tuned) transferred from diabetes, no meta set",
    ),
    ("HWNet, sample weights times L2 (`mode: weight`, `weighted_loss: l2`)", "hwnet-weight"),
    (
        "HWNet, sample weights times L1 (`mode: weight`, the default `weighted_loss: l1`)",
        "hwnet-weight-l1",
    ),
]


def _joined(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def _label(label: str, entries: list[dict[str, Any] | None]) -> str:
    found = [e for e in entries if e is not None]
    chosen = _joined([e["chosen"].split("=")[1] for e in found if "chosen" in e] or ["?"])
    t_err = _joined([f"{e['transition_error']:.2f}" for e in found if "transition_error" in e])
    return label.replace("{chosen}", chosen).replace("{T}", t_err)


def _pivot(
    summary: dict[tuple[str, str], dict[str, Any]],
    rows: list[tuple[str, str]],
    columns: list[str],
    cell: Callable[[dict[str, Any]], str],
    best: Callable[..., float],
) -> list[list[str]]:
    cells, values = [], []
    for label, method in rows:
        entries = [summary.get((col, method)) for col in columns]
        if all(e is None for e in entries):
            continue
        cells.append([_label(label, entries)] + ["–" if e is None else cell(e) for e in entries])
        values.append([None] + [None if e is None else e["mean"] for e in entries])
    bold_best(cells, values, best)
    return cells


def loss_setting() -> str:
    summary = {(r["task"], r["method"]): r for r in load("loss_setting.json")["summary"]}

    def acc(e: dict[str, Any]) -> str:
        return pct(e["mean"], e["std"])

    def cls(dataset: str) -> str:
        columns = [f"{dataset} sym40", f"{dataset} inst40"]
        cells = _pivot(summary, CLS_ROWS, columns, acc, max)
        return table(["method", "symmetric 40%", "instance-dependent 40%"], cells)

    def joint_cell(e: dict[str, Any]) -> str:
        auc = f" (weight AUC {e['weight_auc']:.3f})" if "weight_auc" in e else ""
        return acc(e) + auc

    joint = _pivot(summary, JOINT_ROWS, ["mnist1d sym40"], joint_cell, max)

    def mse(e: dict[str, Any]) -> str:
        auc = f" (AUC {e['weight_auc']:.2f})" if "weight_auc" in e else ""
        return f"{sig(e['mean'], 4)} ± {sig(e['std'], 2)}{auc}"

    regression = _pivot(summary, REG_ROWS, [t for t, _ in REG_TABLES], mse, min)
    return fill(
        "loss_setting",
        {
            "classification:mnist1d": cls("mnist1d"),
            "classification:fashion-mnist": cls("fashion-mnist"),
            "joint": table(["methodologies meta-learned in the run", "test accuracy (%)"], joint),
            "regression": table(["method", *[h for _, h in REG_TABLES]], regression),
        },
    )


# ---------------------------------------------------------------------- schedules, optimizers


def accuracy_table(summary: list[dict[str, Any]]) -> str:
    """``benchmarks/common.py``'s accuracy table, the best method of each target in bold."""
    rows = []
    for r in summary:
        lr = "learned" if r["chosen_lr"] is None else f"{r['chosen_lr']:g}"
        rows.append(
            [
                r["target"],
                r["method"],
                str(r["seeds"]),
                pct(r["test_accuracy"], r["test_accuracy_std"]),
                lr,
                str(r["tuning_runs"]),
            ]
        )
    targets = [r["target"] for r in summary]
    bold_best_rows(rows, targets, [r["test_accuracy"] for r in summary], 3, max)
    header = ["target", "method", "seeds", "final test acc (%)", "chosen lr", "tuning runs"]
    return table(header, rows)


def plot_name(target: str) -> str:
    """The file name ``benchmarks/schedules.py`` gives the learned-rate plot of ``target``."""
    name = target.replace(" / ", "_").replace(" ", "").replace("(", "").replace(")", "")
    return f"lr_{name}.png"


def schedules() -> str:
    summary = load("schedules.json")["summary"]
    plots = "\n\n".join(
        f"![learned rate against the tuned cosine schedule: {t}](img/{plot_name(t)})"
        for t in dict.fromkeys(r["target"] for r in summary)
    )
    return fill("schedules", {"table": accuracy_table(summary), "plots": plots})


def learned_optimizers() -> str:
    doc = load("learned_optimizers.json")
    rows = [
        [
            f"{r['target']} (unseen GP samples)" if r["target"].startswith("gp") else r["target"],
            r["method"],
            str(r["seeds"]),
            f"{r['final_regret']:.4f} ± {r['final_regret_std']:.4f}",
        ]
        for r in doc["black_box"]
    ]
    bold_best_rows(
        rows,
        [r["target"] for r in doc["black_box"]],
        [r["final_regret"] for r in doc["black_box"]],
        3,
        min,
    )
    header = ["function", "method", "repeats", "final regret (mean ± std)"]
    return fill(
        "learned_optimizers",
        {
            "optimizers": accuracy_table(doc["optimizers"]),
            "meta_seeds": meta_seed_table(doc["results"]),
            "black_box": table(header, rows),
        },
    )


def meta_seed_table(results: list[dict[str, Any]]) -> str:
    """The learned optimizer's final test accuracy per target and meta-training seed (mean ±
    std over the application seeds): how much of the spread is the meta-training run."""
    learned = [r for r in results if "meta_seed" in r]
    targets = list(dict.fromkeys(r["target"] for r in learned))
    seeds = sorted({int(r["meta_seed"]) for r in learned})
    rows = []
    for target in targets:
        cells = []
        for s in seeds:
            acc = [
                100 * r["test_accuracy"]
                for r in learned
                if (r["target"], r["meta_seed"]) == (target, s)
            ]
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells.append(f"{statistics.mean(acc):.2f} ± {spread:.2f}" if acc else "-")
        rows.append([target, *cells])
    return table(["target", *(f"meta-training seed {s}" for s in seeds)], rows)


# ---------------------------------------------------------------------- hpo

REGRET_METHODS = {
    "random": "random",
    "TPE": "TPE",
    "GP": "GP",
    "CMA-ES": "CMA-ES",
    "Hyperband": "Hyperband (random + pruner)",
    "BOHB": "BOHB (TPE + Hyperband)",
}
LOTO_METHODS = {
    "cold TPE": "cold TPE",
    "TPE + portfolio warm start": "TPE + portfolio warm start",
    "learned default (zero-shot, no meta-features)": "learned default (1 configuration)",
}
REAL_METHODS = {
    "cold TPE": "cold-start TPE",
    "zero-shot (1 configuration)": "zero-shot (the predicted configuration, no search)",
    "TPE warm-started (zero-shot + 3 nearest tasks)": (
        "TPE warm-started (zero-shot + 3 nearest tasks' bests)"
    ),
    "portfolio, then TPE": "portfolio (10 configurations), then TPE",
    "FLAML zero-shot LightGBM": "FLAML zero-shot LightGBM (peer)",
}


def _budget_table(
    summary: list[dict[str, Any]], bench: str, methods: dict[str, str], budgets: list[int]
) -> str:
    entries = {(r["method"], r["budget"]): r for r in summary if r["benchmark"] == bench}
    cells, values = [], []
    for method, label in methods.items():
        found = [entries.get((method, b)) for b in budgets]
        cells.append(
            [label] + ["" if e is None else f"{e['mean']:.4f} ± {e['std']:.4f}" for e in found]
        )
        values.append([None] + [None if e is None else e["mean"] for e in found])
    bold_best(cells, values, min)
    return table(["method", *[f"@{b}" for b in budgets]], cells)


def real_cash_table(results: list[dict[str, Any]]) -> str:
    """Mean over tables ± std over seeds; in brackets the paired difference to cold-start TPE
    over the table-seed pairs, with wins / ties / losses (a tie: the same score)."""
    score = {
        (r["method"], r["budget"], r["task"], r["seed"]): r["score"]
        for r in results
        if r["benchmark"] == "real-cash"
    }
    seeds = sorted({k[3] for k in score})
    budgets = sorted({k[1] for k in score})
    cells, values = [], []
    for method, label in REAL_METHODS.items():
        row, vals = [label], [None]
        for b in budgets:
            keys = [k for k in score if k[0] == method and k[1] == b]
            if not keys:
                row.append("")
                vals.append(None)
                continue
            per_seed = [statistics.mean(score[k] for k in keys if k[3] == s) for s in seeds]
            mean = statistics.mean(per_seed)
            text = f"{mean:.3f} ± {statistics.stdev(per_seed):.3f}"
            if method != "cold TPE":
                diffs = [score[k] - score[("cold TPE", *k[1:])] for k in keys]
                wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
                ties = len(diffs) - wins - losses
                text += f" ({statistics.mean(diffs):+.3f}; {wins}/{ties}/{losses})"
            row.append(text)
            vals.append(round(mean, 3))
        cells.append(row)
        values.append(vals)
    bold_best(cells, values, max)
    return table(["method", *[f"@{b}" for b in budgets]], cells)


def hpo() -> str:
    doc = load("hpo.json")
    return fill(
        "hpo",
        {
            "regret": _budget_table(
                doc["summary"], "hpobench-regret", REGRET_METHODS, [10, 25, 50]
            ),
            "loto": _budget_table(
                doc["summary"], "hpobench-loto", LOTO_METHODS, [1, 5, 10, 25, 50]
            ),
            "real": real_cash_table(doc["results"]),
        },
    )


# ---------------------------------------------------------------------- hypergrad


def _params(n: int) -> str:
    return f"{n / 1e6:.2g}M" if n >= 1e6 else f"{n / 1e3:.2g}k"


def _cost(row: dict[str, Any]) -> str:
    return f"{1000 * row['seconds']:.0f} ms / {row['peak_mib']:.0f} MiB"


def hypergrad() -> str:
    doc = load("hypergrad.json")
    accuracy = [
        [
            f"`{r['method']}`",
            r["setting"],
            f"{r['rel_error']:.1e}",
            "–" if r["rel_error_own_objective"] is None else f"{r['rel_error_own_objective']:.1e}",
        ]
        for r in doc["accuracy"]
    ]
    cost = doc["cost"]
    methods = list(dict.fromkeys(r["method"] for r in cost))
    width = 256
    ks = sorted({r["K"] for r in cost if r["width"] == width})
    at = {(r["method"], r["K"], r["width"]): r for r in cost}
    by_k = [
        [f"`{m}`"] + [_cost(at[(m, k, width)]) if (m, k, width) in at else "–" for k in ks]
        for m in methods
    ]
    sizes = sorted({(r["params"], r["width"]) for r in cost})
    widths = [w for _, w in sizes]
    by_params = []
    for k in (5, 1):
        for m in methods:
            if all((m, k, w) in at for w in widths) and not (
                k == 1 and all((m, 5, w) in at for w in widths)
            ):
                by_params.append([f"`{m}` (K={k})"] + [_cost(at[(m, k, w)]) for w in widths])
    steps = doc["step_timing"]
    columns = ("variant", "median_ms", "ratio_to_plain", "iqr_ms", "peak_mib")
    step_rows = [[str(r.get(c)) for c in columns] for r in steps["rows"]]
    peaks = {r["variant"]: r.get("peak_mib") for r in steps["rows"]}
    generic = [v for k, v in peaks.items() if k.startswith("generic") and v is not None]
    machine = doc["machine"]
    return fill(
        "hypergrad",
        {
            "machine": (
                f"{machine['device'].upper()} with {machine['threads']} threads, "
                f"torch {machine['torch']}"
            ),
            "accuracy": table(
                [
                    "method",
                    "setting",
                    "rel. error vs closed form",
                    "rel. error vs its own K-step objective",
                ],
                accuracy,
            ),
            "cost_k": table(["method", *[f"K={k}" for k in ks]], by_k),
            "cost_params": table(
                ["method", *[f"{_params(p)} params" for p, _ in sizes]], by_params
            ),
            "rounds": str(steps["rounds"]),
            "steps": table(
                ["variant", "median ms", "× plain step", "IQR ms", "peak MiB"], step_rows
            ),
            "fast_mib": f"{peaks['fast path (jvp)']:.0f}",
            "generic_mib": f"{min(generic):.0f}-{max(generic):.0f}",
            **{
                key: f"{steps[key]:.3f}"
                for key in (
                    "ratio_fast_to_plain",
                    "ratio_generic_to_fast",
                    "ratio_create_graph_to_fast",
                    "ratio_meta_overhead_to_plain",
                )
            },
        },
    )


# ---------------------------------------------------------------------- meta cost

#: the issue-19 targets: (label, JSON ratio, bound, at most?)
META_TARGETS = (
    (
        "fast mode (exact every 5th step, lagged): time <= 1.5x ERM",
        "ratio_fast_to_plain",
        1.5,
        True,
    ),
    ("exact every 7th step: time <= 1.5x ERM", "ratio_interval7_to_plain", 1.5, True),
    ("layer subset (scope head): time <= 1.5x ERM", "ratio_head_to_plain", 1.5, True),
    ("exact mode time <= 2.5x ERM", "ratio_exact_to_plain", 2.5, True),
    ("published recipe / slem exact >= 4x", "ratio_published_to_exact", 4.0, False),
    ("published recipe / slem fast mode >= 4x", "ratio_published_to_fast", 4.0, False),
    ("exact mode peak memory <= 1.5x ERM", "memory_ratio_exact_to_plain", 1.5, True),
    ("exact, lagged: peak memory <= 1.5x ERM", "memory_ratio_lagged_to_plain", 1.5, True),
    ("fast mode peak memory <= 1.5x ERM", "memory_ratio_fast_to_plain", 1.5, True),
    ("layer subset peak memory <= 1.5x ERM", "memory_ratio_head_to_plain", 1.5, True),
)


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}x"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _meta_rows(doc: dict[str, Any], which: str) -> str:
    rows = [
        [
            r["label"],
            f"{r['median_ms']:.1f}",
            f"**{r['ratio_to_erm']:.2f}x**",
            f"{r['iqr_ms']:.1f}",
            _mib(r["peak_mib"]),
            _x(r["memory_ratio_to_erm"]),
            "–" if r["meta_steps_per_step"] is None else f"{r['meta_steps_per_step']:g}",
        ]
        for r in doc["rows"]
        if r["table"] == which or r["variant"] == "erm"
    ]
    header = ["variant", "median ms", "× ERM", "IQR ms", "peak MiB", "× ERM memory", "meta/step"]
    return table(header, rows)


def _per_model(models: dict[str, Any], which: str) -> str:
    return "\n\n".join(
        f"**{m['label']}** ({m['params']:,} parameters):\n\n{_meta_rows(m, which)}"
        for m in models.values()
    )


def _row(model: dict[str, Any], variant: str) -> dict[str, Any]:
    return next(r for r in model["rows"] if r["variant"] == variant)


def _both(models: dict[str, Any], value: Callable[[dict[str, Any]], str]) -> str:
    """``value`` of each model, as "a (Fashion CNN) and b (MNIST-1D CNN)"."""
    return " and ".join(f"{value(m)} ({m['label']})" for m in models.values())


def meta_cost_findings(models: dict[str, Any]) -> tuple[str, str]:
    """The targets table and the sentence on which are met."""
    labels = [m["label"] for m in models.values()]
    rows = []
    verdicts: dict[str, list[str]] = {"all": [], "some": [], "none": []}
    for label, key, bound, at_most in META_TARGETS:
        cells, met = [label], []
        for m in models.values():
            value = m["ratios"].get(key)
            if value is None:
                cells.append("–")
                continue
            ok = value <= bound if at_most else value >= bound
            if ok:
                met.append(m["label"])
            cells.append(f"{value:.2f}x: {'met' if ok else '**not met**'}")
        rows.append(cells)
        measured = len(cells) - 1 - cells.count("–")
        if met and len(met) == measured:
            verdicts["all"].append(label)
        elif met:
            verdicts["some"].append(f"{label} (on the {', '.join(met)} only)")
        else:
            verdicts["none"].append(label)
    verdict = " ".join(
        f"**{title}:** {'; '.join(verdicts[k])}."
        for k, title in (("all", "Met on every CNN"), ("some", "Met on one"), ("none", "Not met"))
        if verdicts[k]
    )
    return table(["target", *labels], rows), verdict


PROFILE_COLUMNS = (
    ("conv_forward", "conv fwd"),
    ("conv_backward", "conv bwd"),
    ("batch_norm", "BatchNorm"),
    ("pooling", "pooling"),
    ("other_ops", "other ops"),
    ("other_events", "non-op events"),
    ("python_untracked", "untracked (Python)"),
    ("wall_ms", "wall"),
)
PROFILE_NAMES = {
    "erm": "ERM",
    "exact": "slem exact",
    "head": "slem layer subset (head)",
    "published": "published recipe",
}


def meta_cost_profile(models: dict[str, Any]) -> tuple[str, str, str]:
    """The profile breakdown, the heaviest other operators and the unit-cost table."""
    rows, tops, units = [], [], []
    for m in models.values():
        prof = m.get("profile")
        if prof is None:
            continue
        for name, b in prof["breakdown"].items():
            rows.append(
                [m["label"], PROFILE_NAMES.get(name, name)]
                + [f"{b[k]:.1f}" for k, _ in PROFILE_COLUMNS]
            )
            top = ", ".join(f"`{k}` {v:.1f}" for k, v in b["top_other_ops"].items())
            tops.append([m["label"], PROFILE_NAMES.get(name, name), top])
        u = prof["unit_costs"]
        units.append(
            [
                m["label"],
                f"{u['forward_ms']:.1f}",
                f"{u['forward_no_grad_ms']:.1f}",
                f"{u['backward_ms']:.1f} ({u['backward_to_forward']:.2f} F)",
                f"{u['jvp_ms']:.1f} ({u['jvp_to_forward']:.2f} F)",
                f"{u['floor_erm_ms']:.0f}",
                f"{u['floor_exact_ms']:.0f} ({_x(u['floor_ratio_exact'])})",
                f"{u['floor_lagged_ms']:.0f} ({_x(u['floor_ratio_lagged'])})",
                f"{u['floor_head_ms']:.0f} ({_x(u['floor_ratio_head'])})",
            ]
        )
    profile_table = table(["model", "step", *[c for _, c in PROFILE_COLUMNS]], rows)
    top_table = table(["model", "step", "operator: ms per step"], tops)
    unit_table = table(
        [
            "model",
            "forward ms",
            "forward, no graph",
            "backward",
            "JVP",
            "floor ERM",
            "floor exact",
            "floor lagged",
            "floor layer subset",
        ],
        units,
    )
    return profile_table, top_table, unit_table


def meta_cost_agreement(models: dict[str, Any]) -> str:
    rows = [
        [
            m["label"],
            f"{m['agreement']['params']:,}",
            f"{m['agreement']['max_rel_error']:.1e}",
            f"{m['agreement']['rel_error_all']:.1e}",
            "yes" if m["agreement"]["max_rel_error"] <= 1e-6 else "**no**",
            f"{m['agreement']['head_cosine_to_exact']:.3f}",
            f"{m['agreement']['head_rel_error_to_exact']:.2f}",
        ]
        for m in models.values()
    ]
    header = [
        "model (width 8)",
        "parameters",
        "max rel. error",
        "rel. error, all",
        "<= 1e-6",
        "layer subset: cosine to exact",
        "layer subset: rel. error",
    ]
    return table(header, rows)


def meta_cost() -> str:
    doc = load("meta_cost.json")
    models = doc["models"]
    machine = doc["machine"]
    targets, verdict = meta_cost_findings(models)
    if doc.get("skipped"):
        verdict += (
            " Not measured: " + "; ".join(f"{k} ({why})" for k, why in doc["skipped"].items()) + "."
        )
    profile, top_other, unit_costs = meta_cost_profile(models)
    with_profile = {k: m for k, m in models.items() if "profile" in m}

    def unit(key: str, digits: int = 1) -> str:
        return _both(with_profile, lambda m: _x(m["profile"]["unit_costs"][key], digits))

    setups = [
        f"* **{m['label']}**: `model: {json.dumps(m['model'])}` ({m['params']:,} parameters) "
        f"on `data: {json.dumps(m['data'])}`"
        for m in models.values()
    ]
    steps = {m["profile"]["steps"] for m in with_profile.values()}
    load_avg = lambda v: "–" if v is None else ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    return fill(
        "meta_cost",
        {
            "machine": (
                f"{machine['device'].upper()} with {machine['threads']} threads, "
                f"torch {machine['torch']}"
            ),
            "rounds": str(doc["rounds"]),
            "discarded": str(doc["discarded_rounds"]),
            "load_before": load_avg(doc["loadavg_before"]),
            "load_after": load_avg(doc["loadavg_after"]),
            "seconds": f"{doc['seconds']:.0f}",
            "load_note": (
                "The load rose above 0.5 during the run: other processes shared the cores for "
                "part of it, which slows every variant (the interleaved rounds spread that over "
                "all of them alike), so the absolute times are above a quiet machine's."
                if max(doc["loadavg_before"][0], doc["loadavg_after"][0]) >= 0.5
                else "The machine was quiet (load below 0.5) before and after the run."
            ),
            "gpu_note": (
                "No GPU was measured: no device was available to this run."
                if machine["device"] == "cpu"
                else ""
            ),
            "models": "\n".join(setups),
            "main_tables": _per_model(models, "main"),
            "other_tables": _per_model(models, "other"),
            "targets": targets,
            "verdict": verdict,
            "floor_exact": unit("floor_ratio_exact"),
            "floor_lagged": unit("floor_ratio_lagged"),
            "exact_measured": _both(models, lambda m: _x(m["ratios"].get("ratio_exact_to_plain"))),
            "b_to_f": unit("backward_to_forward"),
            "jvp_to_f": unit("jvp_to_forward"),
            "published_to_exact": _both(
                models, lambda m: _x(m["ratios"].get("ratio_published_to_exact"))
            ),
            "lagged_memory": _both(
                models, lambda m: _x(_row(m, "exact_lagged")["memory_ratio_to_erm"])
            ),
            "fast_memory": _both(models, lambda m: _x(_row(m, "fast")["memory_ratio_to_erm"])),
            "head_memory": _both(models, lambda m: _x(_row(m, "head")["memory_ratio_to_erm"])),
            "published_to_plain": _both(
                models, lambda m: _x(m["ratios"].get("ratio_published_to_plain"))
            ),
            "published_bound": _both(
                models, lambda m: _x(m["ratios"]["ratio_published_to_plain"] / 2, 1)
            ),
            "published_to_fast": _both(
                models, lambda m: _x(m["ratios"].get("ratio_published_to_fast"))
            ),
            "profile_steps": "/".join(str(s) for s in sorted(steps)) or "–",
            "profile": profile,
            "top_other": top_other,
            "unit_costs": unit_costs,
            "agreement": meta_cost_agreement(models),
        },
    )


# ---------------------------------------------------------------------- data layer, cnn speed


def plain_table(rows: list[dict[str, Any]]) -> str:
    """``benchmarks/data_layer.py``'s table: every key a column, values as printed."""
    keys = list(rows[0])
    return table(keys, [[str(r[k]) for k in keys] for r in rows])


def data_layer() -> str:
    doc = load("data_layer.json")
    return fill(
        "data_layer",
        {
            "note": f"*{doc['note']}*" if doc.get("note") else "",
            "datasets": plain_table(doc["datasets"]),
            "corruptions": plain_table(doc["corruptions"]),
        },
    )


def cnn_speed() -> str:
    doc = load("cnn_speed.json")
    rows = [
        [str(r["width"]), str(r["baseline_ms"]), str(r["ours_ms"]), f"{r['speedup']}x"]
        for r in doc["rows"]
    ]
    return fill(
        "cnn_speed",
        {
            "threads": str(doc["threads"]),
            "table": table(["width", "baseline ms", "ours ms", "speedup"], rows),
        },
    )


def virtual_step() -> str:
    doc = load("virtual_step.json")
    agreement = [
        [
            str(r["epoch"]),
            sig(r["rel_diff_median"], 2),
            sig(r["rel_diff_max"], 2),
            sig(r["cosine_median"], 4),
            sig(r["cosine_min"], 2),
        ]
        for r in doc["agreement"]
    ]
    by = {(r["virtual_step"], r["metric"]): r for r in doc["outcome"]}
    outcome = []
    for mode in ("optimizer", "sgd"):
        acc, best, ratio = (
            by[(mode, m)]
            for m in ("test_accuracy", "test_accuracy_at_best_val", "meta_step_time_ratio")
        )
        outcome.append(
            [
                f"`{mode}`",
                str(acc["seeds"]),
                pct(acc["mean"], acc["std"]),
                pct(best["mean"], best["std"]),
                f"{ratio['mean']:.1f}x",
            ]
        )
    return fill(
        "virtual_step",
        {
            "agreement": table(
                [
                    "epoch",
                    "median rel. difference",
                    "max rel. difference",
                    "median cosine",
                    "min cosine",
                ],
                agreement,
            ),
            "outcome": table(
                [
                    "meta.virtual_step",
                    "seeds",
                    "final test acc (%)",
                    "test acc at best val (%)",
                    "meta step / plain step",
                ],
                outcome,
            ),
        },
    )


# ---------------------------------------------------------------------- fast mode

FAST_DATASETS = {"mnist1d": "MNIST-1D", "fashion-mnist": "Fashion-MNIST"}


def fast_mode_bias(doc: dict[str, Any]) -> str:
    """Per dataset, the per-epoch agreement of the head's and the whole model's
    hypergradients along the ``meta.scope: head`` run."""
    parts = []
    for entry in doc["bias"]:
        rows = [
            [
                str(r["epoch"]),
                sig(r["cosine_median"], 3),
                sig(r["cosine_min"], 2),
                sig(r["rel_error_median"], 3),
                sig(r["rel_error_max"], 2),
                sig(r["norm_ratio_median"], 2),
                sig(r["norm_fast_median"], 2),
                sig(r["norm_exact_median"], 2),
                sig(r["decay_median"], 2),
            ]
            for r in entry["per_epoch"]
        ]
        reached = (
            f"; the run's final test accuracy {100 * entry['test_accuracy']:.2f}%"
            if entry.get("test_accuracy") is not None
            else ""
        )
        parts.append(
            f"#### {FAST_DATASETS.get(entry['dataset'], entry['dataset'])}\n\n"
            f"{entry['epochs']} epochs (the first is ERM warm-up), seed {entry['seed']}, "
            f"{entry['meta_steps']} meta steps; over all of them median cosine "
            f"{sig(entry['cosine_median'], 3)} (min {sig(entry['cosine_min'], 2)}), median "
            f"relative error {sig(entry['rel_error_median'], 2)} (max "
            f"{sig(entry['rel_error_max'], 2)}){reached}.\n\n"
            + table(
                [
                    "epoch",
                    "median cosine",
                    "min cosine",
                    "median rel. error",
                    "max rel. error",
                    "median norm ratio",
                    "median norm, head",
                    "median norm, exact",
                    "meta weight decay term",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


#: the fast mode's variants (amortized: the exact meta step every k-th step) and the
#: layer-subset ones (``meta.scope: head``), each table with exact and ERM for reference
FAST_INTERVAL = ("exact", "interval 5, lagged", "interval 7", "ERM")
FAST_HEAD = (
    "exact",
    "exact + meta wd 0",
    "head",
    "head + interval 2",
    "head + meta wd 0",
    "head + monotone",
    "head + monotone + meta wd 0",
    "ERM",
)


def fast_mode_accuracy(acc: dict[str, Any], variants: Sequence[str]) -> str:
    """The accuracy of ``variants``: per seed and mean ± std, the meta step's time over an
    ERM step's and the average step's (at the variant's interval), the weights on noisy
    over clean samples at the last epoch."""
    rows = []
    for r in acc["table"]:
        if r["variant"] not in variants:
            continue
        ratio, share = r["meta_step_time_ratio"], r.get("noisy_over_clean")
        cost, final = r.get("step_cost_ratio"), r.get("per_seed", {}).get("test_accuracy", {})
        rows.append(
            [
                r["variant"],
                ", ".join(f"{100 * final[s]:.2f}" for s in sorted(final, key=int)),
                pct(r["test_accuracy"]["mean"], r["test_accuracy"]["std"]),
                pct(r["test_accuracy_at_best_val"]["mean"], r["test_accuracy_at_best_val"]["std"]),
                "–" if ratio["mean"] is None else f"{ratio['mean']:.1f}x",
                "–" if cost is None else f"{cost:.2f}x",
                "–" if not share or share["mean"] is None else f"{share['mean']:.2f}",
            ]
        )
    return table(
        [
            "variant",
            "final test acc per seed (%)",
            "final test acc (%)",
            "test acc at best val (%)",
            "meta step / ERM step",
            "average step / ERM step",
            "weight noisy / clean, last epoch",
        ],
        rows,
    )


def fast_mode_paired(acc: dict[str, Any], variants: Sequence[str]) -> str:
    rows = []
    for r in acc["paired"]:
        if r["variant"] not in variants:
            continue
        cells = [r["variant"]]
        for m in ("test_accuracy", "test_accuracy_at_best_val"):
            seeds = r["per_seed"][m]
            cells.append(", ".join(_points(seeds[s]) for s in sorted(seeds, key=int)))
            cells.append(f"{_points(r[m]['mean'])} ± {100 * r[m]['std']:.2f}")
        rows.append(cells)
    return table(
        [
            "variant - exact",
            "final test, per seed",
            "final test, mean ± std",
            "at best val, per seed",
            "at best val, mean ± std",
        ],
        rows,
    )


def fast_mode_acceptance(acc: dict[str, Any], variants: Sequence[str]) -> str:
    """Issue 19's bound (within 0.3 points of exact, mean over the seeds, on the final test
    accuracy and on the test accuracy at the best-validation epoch), per variant: met or
    not."""
    bound = 100 * acc.get("bound", 0.003)
    lines = []
    for r in acc["paired"]:
        if r["variant"] not in variants:
            continue
        final, best = r["test_accuracy"]["mean"], r["test_accuracy_at_best_val"]["mean"]
        within = r.get("within_bound") or {
            "both": abs(final) <= bound / 100 and abs(best) <= bound / 100
        }
        n = len(r["per_seed"]["test_accuracy"])
        lines.append(
            f"* `{r['variant']}` minus exact over {n} seed{'s' if n > 1 else ''}: "
            f"{_points(final)} points of final test accuracy and {_points(best)} at the "
            f"best-validation epoch: the bound of issue 19 (within {bound:.1f} points of exact "
            f"on both) is **{'met' if within['both'] else 'not met'}**."
        )
    return "\n".join(lines)


def fast_mode_staleness(doc: dict[str, Any]) -> dict[str, str]:
    """The staleness of the amortized mode's hypergradient along its run: a summary line,
    the table per lag and the table per epoch (markers ``staleness``, ``staleness_lag``,
    ``staleness_epochs``)."""
    s = doc.get("staleness")
    if s is None:
        missing = "*(not run: `--parts staleness`)*"
        return {"staleness": missing, "staleness_lag": "", "staleness_epochs": ""}
    stale, cons = s["stale"], s["consecutive"]
    same = s.get("same_as_plain")
    check = (
        ""
        if same is None
        else f" The instrumented run {'is' if same else 'is **not**'} the plain run: the same "
        f"per-epoch weights and final test accuracy ({100 * s['test_accuracy']:.2f}% against "
        f"{100 * s['plain_test_accuracy']:.2f}%)."
    )
    worst = s["own_rel_error_max"]
    own = "are the same, bit for bit" if worst == 0 else f"differ by at most {worst:.1e} (relative)"
    summary = (
        f"MNIST-1D, seed {s['seed']}, {s['epochs']} epochs (the first is ERM warm-up), "
        f"`meta.interval: {s['meta']['interval']}`, `meta.order: {s['meta']['order']}`: "
        f"{s['steps']} steps after the warm-up, {s['meta_steps']} of them meta steps (a share "
        f"of {s['meta_share']:.3f}). On the {stale['n']} steps between meta steps the "
        f"hypergradient last applied has median cosine {sig(stale['cosine_median'], 2)} "
        f"(mean {sig(stale['cosine_mean'], 2)}, positive on "
        f"{100 * stale['cosine_positive']:.0f}% of the steps) and median relative error "
        f"{sig(stale['rel_error_median'], 3)} to the exact one; the exact hypergradients of "
        f"consecutive steps, median cosine {sig(cons['cosine_median'], 2)} (mean "
        f"{sig(cons['cosine_mean'], 2)}, positive on {100 * cons['cosine_positive']:.0f}%) and "
        f"median relative error {sig(cons['rel_error_median'], 3)}. At the meta steps the "
        f"run's own hypergradient and the functional one {own}.{check}"
    )

    def cells(d: dict[str, Any], extremes: bool = True) -> list[str]:
        if not d.get("n"):
            return ["–"] * (5 if extremes else 4)
        out = [
            sig(d["cosine_median"], 2),
            sig(d["cosine_mean"], 2),
            f"{d['cosine_positive']:.2f}",
            sig(d["rel_error_median"], 3),
        ]
        return [*out, sig(d["rel_error_max"], 2)] if extremes else out

    stats = ["median cos", "mean cos", "share cos > 0", "median rel. error"]
    lag_rows = [
        [str(r["lag"]), str(r["n"]), *cells(r), *cells(r["consecutive"], False)]
        for r in s["per_lag"]
    ]
    lag_rows.append(["all between meta steps", str(stale["n"]), *cells(stale), *["–"] * 4])
    lag_rows.append(["all", str(cons["n"]), *["–"] * 5, *cells(cons, False)])
    lag_table = table(
        [
            "lag",
            "steps",
            *(f"stale: {h}" for h in stats),
            "stale: max rel. error",
            *(f"consecutive: {h}" for h in stats),
        ],
        lag_rows,
    )
    epoch_rows = [
        [
            str(r["epoch"]),
            f"{r['meta_steps']} / {r['steps']}",
            *cells(r["stale"], False),
            *cells(r["consecutive"], False),
            "–" if r.get("norm_exact_median") is None else sig(r["norm_exact_median"], 2),
        ]
        for r in s["per_epoch"]
    ]
    epoch_table = table(
        [
            "epoch",
            "meta steps / steps",
            *(f"stale: {h}" for h in stats),
            *(f"consecutive: {h}" for h in stats),
            "median norm, exact",
        ],
        epoch_rows,
    )
    return {"staleness": summary, "staleness_lag": lag_table, "staleness_epochs": epoch_table}


def fast_mode_weights(acc: dict[str, Any], variants: Sequence[str], every: int = 3) -> str:
    """Per epoch (every ``every``-th and the last), the mean over seeds of the learned weights'
    noisy / clean ratio, one column per weighting variant of ``variants``."""
    traces: dict[str, dict[int, list[float]]] = {}
    for run in (r for r in acc["runs"] if r["variant"] in variants):
        for w in run.get("weights") or []:
            traces.setdefault(run["variant"], {}).setdefault(w["epoch"], []).append(
                w["noisy_over_clean"]
            )
    variants = [r["variant"] for r in acc["table"] if r["variant"] in traces]
    epochs = sorted({e for t in traces.values() for e in t})
    shown = [e for e in epochs if e % every == 0 or e == epochs[-1] or e == epochs[0]]
    rows = [
        [str(e)]
        + [f"{statistics.mean(traces[v][e]):.2f}" if traces[v].get(e) else "–" for v in variants]
        for e in shown
    ]
    return table(["epoch", *variants], rows)


def fast_mode_diagnosis(doc: dict[str, Any], every: int = 3) -> str:
    """Per diagnosed variant, every ``every``-th epoch: test accuracy, memorization, what the
    learned rule gives noisy and hard clean samples, the rule at three losses, its norm."""
    if not doc.get("diagnosis"):
        return "*(not run: `--diagnose`)*"
    parts = []
    for entry in doc["diagnosis"]:
        rows = []
        last = entry["epochs"][-1]["epoch"]
        for r in entry["epochs"]:
            if not (r["epoch"] % every == 0 or r["epoch"] in (1, last)):
                continue
            rule = r.get("rule")
            rows.append(
                [
                    str(r["epoch"]),
                    f"{100 * r['test_accuracy']:.2f}",
                    f"{100 * r['clean_fit']:.1f}",
                    f"{100 * r['noisy_memorized']:.1f}",
                    f"{100 * r['noisy_true']:.1f}",
                    "–" if rule is None else f"{r['noisy_over_clean']:.2f}",
                    "–" if rule is None else f"{r['hard_clean_over_clean']:.2f}",
                    "–"
                    if rule is None
                    else " / ".join(sig(w, 2) for w in (rule[0], rule[3], rule[6])),
                    "–" if rule is None else f"{r['rule_norm']:.2f}",
                ]
            )
        parts.append(
            f"**{entry['variant']}** (seed {entry['seed']}):\n\n"
            + table(
                [
                    "epoch",
                    "test acc (%)",
                    "clean labels fit (%)",
                    "noisy labels memorized (%)",
                    "noisy samples' true label (%)",
                    "weight noisy / clean",
                    "weight hardest clean / clean",
                    "rule at loss 0.05 / 1 / 5",
                    "rule norm",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


def fast_mode_other(acc: dict[str, Any] | None, variants: Sequence[str]) -> str:
    """Another dataset's accuracy table and paired differences for ``variants`` (or a line
    saying it was not run)."""
    if acc is None:
        return "*(not run: `--fashion-seeds 0` or Fashion-MNIST not installed)*"
    runs = [r for r in acc["runs"] if r["variant"] in variants]
    seeds = sorted({r["seed"] for r in runs})
    named = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    return (
        f"{acc['epochs']} epochs, {named}:\n\n{fast_mode_accuracy(acc, variants)}\n\n"
        f"{fast_mode_paired(acc, variants)}"
    )


def fast_mode_seed0(acc: dict[str, Any] | None, variants: Sequence[str]) -> str:
    """Seed 0's runs of ``variants`` on another dataset: both accuracies, the difference to
    exact, the meta step's time over an ERM step's."""
    if acc is None:
        return "*(not run: `--fashion-seeds 0` or Fashion-MNIST not installed)*"
    runs = {r["variant"]: r for r in acc["runs"] if r["seed"] == 0 and r["variant"] in variants}
    exact = runs.get("exact")
    rows = []
    for v in variants:
        r = runs.get(v)
        if r is None:
            continue
        diff = (
            "–"
            if exact is None or v == "exact"
            else _points(r["test_accuracy"] - exact["test_accuracy"])
        )
        ratio = r.get("meta_step_time_ratio")
        rows.append(
            [
                v,
                f"{100 * r['test_accuracy']:.2f}",
                f"{100 * r['test_accuracy_at_best_val']:.2f}",
                diff,
                "–" if ratio is None else f"{ratio:.1f}x",
            ]
        )
    return f"{acc['epochs']} epochs, seed 0:\n\n" + table(
        [
            "variant",
            "final test acc (%)",
            "test acc at best val (%)",
            "final - exact (points)",
            "meta step / ERM step",
        ],
        rows,
    )


def fast_mode() -> str:
    doc = load("fast_mode.json")
    acc, fashion = doc["accuracy"], doc.get("accuracy_fashion")
    return fill(
        "fast_mode",
        {
            "fast_accuracy": fast_mode_accuracy(acc, FAST_INTERVAL),
            "fast_paired": fast_mode_paired(acc, FAST_INTERVAL),
            "fast_acceptance": fast_mode_acceptance(acc, FAST_INTERVAL),
            "fast_weights": fast_mode_weights(acc, FAST_INTERVAL),
            "fast_fashion": fast_mode_other(fashion, ("exact", "interval 5, lagged", "ERM")),
            **fast_mode_staleness(doc),
            "bias": fast_mode_bias(doc),
            "accuracy": fast_mode_accuracy(acc, FAST_HEAD),
            "paired": fast_mode_paired(acc, FAST_HEAD),
            "acceptance": fast_mode_acceptance(acc, FAST_HEAD),
            "weights": fast_mode_weights(acc, FAST_HEAD),
            "fashion": fast_mode_seed0(fashion, FAST_HEAD),
            "diagnosis": fast_mode_diagnosis(doc),
            "epochs": str(acc["epochs"]),
        },
    )


# ---------------------------------------------------------------------- transfer

#: the baselines' columns, in order, with their headers (rules follow, as ``rule:NAME``)
TRANSFER_METHODS = {
    "erm": "ERM",
    "gce": "GCE (q 0.7)",
    "sce": "SCE (0.1, 1)",
    "gce_tuned": "GCE tuned",
    "sce_tuned": "SCE tuned",
}


def _transfer_methods(summary: list[dict[str, Any]]) -> list[str]:
    present = dict.fromkeys(e["method"] for e in summary)
    rules = [m for m in present if m.startswith("rule:")]
    return [m for m in TRANSFER_METHODS if m in present] + rules


def transfer_accuracy(doc: dict[str, Any], regime: str, value: str) -> str:
    """Rows (task, corruption), a column per method: mean ± std of ``value`` over seeds; the
    best of each row in bold."""
    summary = [e for e in doc["summary"] if e["regime"] == regime]
    methods = _transfer_methods(summary)
    at = {(e["task"], e["corruption"], e["method"]): e for e in summary}
    cells = list(dict.fromkeys((e["task"], e["corruption"]) for e in summary))
    rows = []
    for task, corruption in cells:
        entries = [at.get((task, corruption, m)) for m in methods]
        texts = [
            "–" if e is None or e[value] is None else pct(e[value], e[f"{value}_std"])
            for e in entries
        ]
        means = [None if e is None else e[value] for e in entries]
        present = [m for m in means if m is not None]
        top = max(present) if present else None
        texts = [
            f"**{t}**" if m is not None and m == top else t
            for t, m in zip(texts, means, strict=True)
        ]
        rows.append([task, corruption, *texts])
    header = ["task", "corruption", *[TRANSFER_METHODS.get(m, m[5:]) for m in methods]]
    return table(header, rows)


def transfer_memorization(doc: dict[str, Any]) -> str:
    """ERM's best-epoch and final-epoch test accuracy per task and corruption, both regimes;
    a per-task mean over the 40%-noise corruptions."""
    at = {(m["regime"], m["task"], m["corruption"]): m for m in doc["memorization"]}
    cells = list(dict.fromkeys((m["task"], m["corruption"]) for m in doc["memorization"]))
    regimes = [r for r in ("short", "memorization") if any(k[0] == r for k in at)]

    def cols(found: list[dict[str, Any]]) -> list[str]:
        if not found:
            return ["–", "–", "–"]
        best = statistics.mean(m["best_epoch_test_accuracy"] for m in found)
        final = statistics.mean(m["final_test_accuracy"] for m in found)
        return [f"{100 * best:.2f}", f"{100 * final:.2f}", f"{100 * (best - final):.2f}"]

    rows = []
    for task in dict.fromkeys(t for t, _ in cells):
        for t, corruption in cells:
            if t == task:
                row = [task, corruption]
                for r in regimes:
                    m = at.get((r, task, corruption))
                    row += cols([m] if m else [])
                rows.append(row)
        row = [task, "**mean, 40% noise**"]
        for r in regimes:
            found = [
                m
                for (reg, t, c), m in at.items()
                if reg == r and t == task and not c.startswith("lt")
            ]
            row += [f"**{x}**" if x != "–" else x for x in cols(found)]
        rows.append(row)
    header = ["task", "corruption"]
    for r in regimes:
        header += [f"{r}: best epoch", f"{r}: final", f"{r}: gap (points)"]
    return table(header, rows)


def transfer_compute(doc: dict[str, Any]) -> str:
    def sec(x: float | None) -> str:
        return "–" if x is None else f"{x:.1f}"

    rows = [
        [
            c["regime"],
            c["task"],
            sec(c["erm_run_seconds"]),
            sec(c["rule_run_seconds"]),
            str(c["searches"]),
            str(c["search_runs"]),
            sec(c["mean_search_seconds"]),
            sec(c["total_search_seconds"]),
        ]
        for c in doc["compute"]
    ]
    header = [
        "regime",
        "task",
        "s / ERM run",
        "s / rule run",
        "searches",
        "search runs",
        "s / search",
        "s, all searches",
    ]
    return table(header, rows)


def transfer_chosen(doc: dict[str, Any]) -> str:
    """The losses the searches chose (on seed 0's noisy validation split)."""
    at = {
        (e["regime"], e["task"], e["corruption"], e["method"]): e["chosen"]
        for e in doc["summary"]
        if "chosen" in e
    }
    cells = list(dict.fromkeys(k[:3] for k in at))
    rows = []
    for cell in cells:
        gce = at.get((*cell, "gce_tuned"))
        sce = at.get((*cell, "sce_tuned"))
        rows.append(
            [
                *cell,
                "–" if gce is None else f"{gce['gce_q']:.2f}",
                "–" if sce is None else f"{sce['sce_alpha']:.3f} / {sce['sce_beta']:.2f}",
            ]
        )
    return table(["regime", "task", "corruption", "GCE q", "SCE alpha / beta"], rows)


def transfer_rules(doc: dict[str, Any]) -> str:
    """One row per rule (the inputs ablation): what it reads and its family, then per regime
    the mean over the 40%-noise cells of its noisy-validation score (what rules may be
    chosen on) and of its final test accuracy minus ERM's, and the runs more than 1 point
    below ERM over every cell."""
    summary = doc["summary"]
    at = {(e["regime"], e["task"], e["corruption"], e["method"]): e for e in summary}
    rows = []
    for method in [m for m in _transfer_methods(summary) if m.startswith("rule:")]:
        info = doc.get("rules_info", {}).get(method[5:], {})
        if ":0.4" not in info.get("family", ""):  # not a label-noise rule (the zoo's others)
            continue
        row = [
            method[5:],
            str(info.get("kind", "–")),
            ", ".join(info.get("inputs", [])) or "–",
            info.get("family", "–"),
            f"{info['meta_lr']:g}" if info.get("meta_lr") else "–",
        ]
        for regime in ("short", "memorization"):
            cells = [k[:3] for k in at if k[3] == method and k[0] == regime]
            noisy = [c for c in cells if not c[2].startswith("lt") and (*c, "erm") in at]
            if not noisy:
                row += ["–", "–"]
                continue
            scores = [at[(*c, method)].get("val_score") for c in noisy]
            val = statistics.mean(100 * v for v in scores if v is not None) if all(scores) else 0.0
            gain = statistics.mean(
                100 * (at[(*c, method)]["test_accuracy"] - at[(*c, "erm")]["test_accuracy"])
                for c in noisy
            )
            row += [f"{val:.2f}", f"{gain:+.2f}"]
        checks = doc.get("targets", {}).get(method[5:], [])
        collapses = [t for t in checks if str(t.get("target", "")).startswith("(c)")]
        row.append(f"{collapses[0]['value']:.0f}" if collapses else "–")
        rows.append(row)
    header = [
        "rule",
        "kind",
        "inputs",
        "family",
        "meta lr",
        "short: noisy val",
        "short: test - ERM",
        "memorization: noisy val",
        "memorization: test - ERM",
        "runs > 1 pt below ERM",
    ]
    return table(header, rows)


def transfer_clean(doc: dict[str, Any]) -> str:
    """The long-tail cells (clean labels): ERM and each rule that was not meta-trained for
    label noise (the zoo's class-imbalance rule and learning-rate schedule), final test
    accuracy, mean ± std over seeds."""
    info = doc.get("rules_info", {})
    others = [f"rule:{r}" for r, i in info.items() if ":0.4" not in i.get("family", "")]
    at = {(e["regime"], e["task"], e["corruption"], e["method"]): e for e in doc["summary"]}
    cells = sorted({k[:3] for k in at if k[2].startswith("lt") and k[3] in others})
    rows = []
    for cell in cells:
        entries = [at.get((*cell, m)) for m in ["erm", *others]]
        rows.append(
            [
                cell[0],
                cell[1],
                *[
                    "–" if e is None else pct(e["test_accuracy"], e["test_accuracy_std"])
                    for e in entries
                ],
            ]
        )
    return table(["regime", "task", "ERM", *[m[5:] for m in others]], rows)


def transfer_targets(doc: dict[str, Any]) -> str:
    if not doc["targets"]:
        return (
            "*No rule measured yet: the baselines only. Add one with "
            "`python benchmarks/transfer.py --threads 1 --rule NAME=PATH`.*"
        )
    parts = []
    info = doc.get("rules_info", {})
    # the zoo's label-noise rules (the targets are about 40% label noise)
    shown = [
        r
        for r in doc["targets"]
        if info.get(r, {}).get("zoo") and ":0.4" in info.get(r, {}).get("family", "")
    ] or list(doc["targets"])
    for rule in shown:
        checks = doc["targets"][rule]
        rows = []
        for c in checks:
            if c["value"] is None:
                rows.append([c["target"], "–", f"{c['goal']:+g}", "not measured", "–", "–"])
                continue
            sign = ">=" if c["higher_is_better"] else "<="
            value = f"{c['value']:.3f}" if "compute" in c["target"] else f"{c['value']:+.2f}"
            rows.append(
                [
                    c["target"],
                    value,
                    f"{sign} {c['goal']:g}",
                    "**pass**" if c["pass"] else "**fail**",
                    f"{c['margin']:+.2f}",
                    str(c["cells"]),
                ]
            )
        path = doc["rules"].get(rule, "")
        parts.append(
            f"Rule `{rule}` (`{path}`):\n\n"
            + table(["target", "value", "goal", "verdict", "margin", "cells / runs"], rows)
        )
    return "\n\n".join(parts)


def transfer() -> str:
    doc = load("transfer.json")
    return fill(
        "transfer",
        {
            "memorization": transfer_memorization(doc),
            "rules": transfer_rules(doc),
            "clean": transfer_clean(doc),
            "short:final": transfer_accuracy(doc, "short", "test_accuracy"),
            "short:best_val": transfer_accuracy(doc, "short", "test_accuracy_at_best_val"),
            "memorization:final": transfer_accuracy(doc, "memorization", "test_accuracy"),
            "memorization:best_val": transfer_accuracy(
                doc, "memorization", "test_accuracy_at_best_val"
            ),
            "chosen": transfer_chosen(doc),
            "compute": transfer_compute(doc),
            "targets": transfer_targets(doc),
        },
    )


# ---------------------------------------------------------------------- distributed


def distributed() -> str:
    """Scaling over ranks: cross-task meta-training and data-parallel training."""
    cross, dp = load("distributed.json"), load("distributed_dp.json")

    def spread(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}"

    def setting(r: dict[str, Any]) -> str:
        who = "independent processes" if r["independent"] else "rank" + "s" * (r["ranks"] > 1)
        return f"{r['ranks']} {who} x {r['threads']} thread" + "s" * (r["threads"] > 1)

    cross_rows = []
    for name, fam in cross["families"].items():
        base = next(r["median"] for r in fam["rows"] if (r["ranks"], r["threads"]) == (1, 1))
        cross_rows += [
            [
                f"`{name}`",
                setting(r),
                f"{r['median']:.1f}",
                spread(r["episode_steps_per_s"]),
                f"{r['median'] / base:.2f}x",
            ]
            for r in fam["rows"]
        ]
    dp_rows = []
    for case in dp["cases"]:
        rows = [r for r in dp["rows"] if r["case"] == case]
        first = rows[0]["median"]
        dp_rows += [
            [
                f"`{case}`",
                r["setting"],
                f"{r['median']:.1f}",
                spread(r["steps_per_s"]),
                f"{r['median'] / first:.2f}x",
            ]
            for r in rows
        ]
    cases = "; ".join(
        f"`{name}`: {c['model']['arch']} of width {c['model']['width']} on {c['data']['name']}, "
        f"global batch {c['optim']['batch_size']}, {dp['timed_steps'][name]} timed steps"
        for name, c in dp["cases"].items()
    )
    families = "; ".join(f"`{name}`: {fam['workload']}" for name, fam in cross["families"].items())
    speedups = ", ".join(
        f"{fam['speedup_2ranks_vs_1rank_2threads']:.2f}x (`{name}`)"
        for name, fam in cross["families"].items()
    )
    ceilings = ", ".join(
        f"{fam['ceiling_2_independent_vs_1rank_1thread']:.2f}x (`{name}`)"
        for name, fam in cross["families"].items()
    )
    ranks_vs_one = ", ".join(
        f"{fam['speedup_2ranks_vs_1rank_1thread']:.2f}x (`{name}`)"
        for name, fam in cross["families"].items()
    )
    return fill(
        "distributed",
        {
            "cores": str(cross["cores"]),
            "torch": cross["torch"],
            "repeats": str(cross["repeats"]),
            "cross_families": families,
            "cross_steps": str(cross["meta_steps"]),
            "cross_table": table(
                ["family", "setting", "episode steps/s", "range", "vs 1 rank x 1 thread"],
                cross_rows,
            ),
            "cross_speedup": speedups,
            "cross_ceiling": ceilings,
            "cross_vs_one": ranks_vs_one,
            "dp_cases": cases + ".",
            "dp_table": table(["case", "setting", "steps/s", "range", "speed-up"], dp_rows),
        },
    )


# ---------------------------------------------------------------------- scikit-learn estimators

#: slem's estimators in ``sklearn_estimators.json`` (the others are scikit-learn's)
SLEM_ESTIMATORS = ("slem ERM", "MW-Net", "CMW-Net", "zoo rule", "zoo rule, 30 epochs")
NOISE_TITLES = {"symmetric": "symmetric 30%", "pairflip": "pair-flip 30%", "none": "clean"}
#: a paired difference is "clear" when the two-sided sign test over its pairs is below this
SIGN_LEVEL = 0.05


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test p-value of ``wins`` against ``losses`` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


class EstimatorScores:
    """The rows of ``sklearn_estimators.json`` by (table, noise, estimator) and (fold, seed)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        protocol = doc["protocol"]
        self.doc = doc
        self.info: dict[str, Any] = protocol["tables"]
        self.estimators: list[str] = list(protocol["estimators"])
        self.baseline: str = protocol["baseline"]
        self.by: dict[tuple[str, str, str], dict[tuple[int, int], dict[str, Any]]] = {}
        for r in doc["rows"]:
            key = (r["table"], r["noise"], r["estimator"])
            self.by.setdefault(key, {})[(r["fold"], r["seed"])] = r
        self.cells = [
            (t, n)
            for n in protocol["noises"]
            for t in protocol["tables"]
            if (t, n, self.baseline) in self.by
        ]
        self.noisy = [(t, n) for t, n in self.cells if n != "none"]
        self.others = [e for e in self.estimators if e != self.baseline]

    def values(self, t: str, n: str, e: str, field: str = "accuracy") -> list[float]:
        rows = self.by.get((t, n, e), {})
        return [rows[k][field] for k in sorted(rows)]

    def mean(self, t: str, n: str, e: str, field: str = "accuracy") -> float | None:
        vals = self.values(t, n, e, field)
        return statistics.mean(vals) if vals else None

    def need(self, t: str, n: str, e: str, field: str = "accuracy") -> float:
        """The mean of a cell that must have rows (a KeyError names it otherwise)."""
        m = self.mean(t, n, e, field)
        if m is None:
            raise KeyError(f"sklearn_estimators.json has no {field} of {e} on {t}, {n}")
        return m

    def mean_std(self, t: str, n: str, e: str, field: str = "accuracy") -> str:
        vals = self.values(t, n, e, field)
        if not vals:
            return "–"
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return pct(statistics.mean(vals), std)

    def diffs(self, t: str, n: str, e: str, field: str = "accuracy") -> list[float]:
        """``e`` minus the baseline on the same (fold, seed) pairs."""
        base, rows = self.by.get((t, n, self.baseline), {}), self.by.get((t, n, e), {})
        return [rows[k][field] - base[k][field] for k in sorted(rows) if k in base]

    def paired(self, t: str, n: str, e: str, field: str = "accuracy") -> dict[str, Any]:
        d = self.diffs(t, n, e, field)
        # one test row of difference is 1/n_test: anything smaller is round-off, a tie
        wins = sum(x > 1e-9 for x in d)
        losses = sum(x < -1e-9 for x in d)
        p = sign_test(wins, losses)
        verdict = "no clear difference"
        if p < SIGN_LEVEL:
            verdict = "better" if wins > losses else "worse"
        return {
            "n": len(d),
            "mean": statistics.mean(d) if d else 0.0,
            "std": statistics.stdev(d) if len(d) > 1 else 0.0,
            "wins": wins,
            "ties": len(d) - wins - losses,
            "losses": losses,
            "p": p,
            "verdict": verdict,
        }

    def count(self) -> int:
        return min(len(self.by[(t, n, self.baseline)]) for t, n in self.cells)


def _cell_name(t: str, n: str) -> str:
    return f"{t}, {NOISE_TITLES[n]}"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def estimators_accuracy(s: EstimatorScores, noise: str, columns: Sequence[str]) -> str:
    cells, values = [], []
    for t, n in s.cells:
        if n != noise:
            continue
        cells.append([t] + [s.mean_std(t, n, e) for e in columns])
        values.append([None] + [s.mean(t, n, e) for e in columns])
    bold_row_best(cells, values, max)
    return table(["table", *columns], cells)


def bold_row_best(
    cells: list[list[str]], values: list[list[float | None]], best: Callable[..., float]
) -> None:
    """Bold, in each row, the cells from the second column on whose value is ``best``."""
    for row, vals in zip(cells, values, strict=True):
        present = [v for v in vals[1:] if v is not None]
        if not present:
            continue
        top = best(present)
        for col in range(1, len(row)):
            if vals[col] is not None and round(vals[col], 12) == round(top, 12):
                row[col] = f"**{row[col]}**"


def estimators_paired(s: EstimatorScores, field: str = "accuracy") -> str:
    columns = s.others if field == "accuracy" else [e for e in s.others if e in SLEM_ESTIMATORS]
    rows = []
    for t, n in s.cells:
        row = [t, NOISE_TITLES[n]]
        for e in columns:
            p = s.paired(t, n, e, field)
            if p["n"] == 0:
                row.append("–")
                continue
            wtl = f"{p['wins']}/{p['ties']}/{p['losses']}"
            text = f"{_points(p['mean'])} ± {100 * p['std']:.2f} ({wtl})"
            row.append(f"**{text}**" if p["verdict"] != "no clear difference" else text)
        rows.append(row)
    return table(["table", "noise", *columns], rows)


def estimators_last_epoch(s: EstimatorScores) -> str:
    columns = [e for e in s.estimators if e in SLEM_ESTIMATORS]
    rows = []
    for t, n in s.cells:
        row = [t, NOISE_TITLES[n]]
        for e in columns:
            last, best = s.mean(t, n, e, "accuracy_last_epoch"), s.mean(t, n, e)
            epochs = s.values(t, n, e, "best_epoch")
            if last is None or best is None:
                row.append("–")
                continue
            row.append(
                f"{s.mean_std(t, n, e, 'accuracy_last_epoch')} ({_points(last - best)}; "
                f"epoch {statistics.median(epochs):g})"
            )
        rows.append(row)
    return table(["table", "noise", *columns], rows)


def estimators_time(s: EstimatorScores) -> str:
    rows = []
    for t in s.info:
        row = [t]
        for e in s.estimators:
            secs = [
                r["fit_seconds"]
                for (tt, _, ee), rs in s.by.items()
                if (tt, ee) == (t, e)
                for r in rs.values()
            ]
            row.append(sig(statistics.median(secs), 2) if secs else "–")
        if len(row) > 1:
            rows.append(row)
    return table(["table", *s.estimators], rows)


def estimators_tables(s: EstimatorScores) -> str:
    family = set(_zoo_family("label-noise"))
    rows = []
    for t, info in s.info.items():
        name = f"`{info['data']}`" + (f", target `{info['target']}`" if info["target"] else "")
        shares = "/".join(f"{100 * c:.0f}" for c in sorted(info["class_shares"], reverse=True))
        rows.append(
            [
                t,
                name,
                f"{info['rows']:,}",
                str(info["features"]),
                str(info["classes"]),
                shares,
                "yes" if info["data"] in family else "no",
                ", ".join(NOISE_TITLES[n] for tt, n in s.cells if tt == t),
            ]
        )
    header = [
        "table",
        "source",
        "rows",
        "features",
        "classes",
        "class shares (%)",
        "in the zoo rule's family",
        "noise",
    ]
    return table(header, rows)


def _zoo_family(entry: str) -> list[str]:
    card = json.loads((ZOO / entry / "card.json").read_text())
    return list(card["family"]["datasets"])


def estimators_machine(s: EstimatorScores) -> str:
    sessions = s.doc["sessions"]
    loads = [x for se in sessions for x in (se["load_start"][0], se["load_end"][0])]
    loads += [r["load1"] for r in s.doc["rows"]]
    cores = sessions[0]["cores"]
    seconds = sum(se["seconds"] for se in sessions)
    text = (
        f"{len(s.doc['rows'])} fits in {seconds / 60:.0f} minutes on one thread "
        f"({len(sessions)} session{'s' * (len(sessions) > 1)}; torch {sessions[0]['torch']}, "
        f"scikit-learn {sessions[0]['sklearn']}, {cores} cores). The 1-minute load average was "
        f"{min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f})"
    )
    if max(loads) > 1:
        text += (
            ": the machine was shared (other work on the other core), so the fit seconds are "
            "rough, their ratios more telling than their values"
        )
    return text + "."


def _clear(s: EstimatorScores, e: str, field: str = "accuracy") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"better": [], "worse": [], "no clear difference": []}
    for t, n in s.noisy:
        p = s.paired(t, n, e, field)
        if p["n"]:
            out[p["verdict"]].append(
                f"{_cell_name(t, n)} ({_points(p['mean'])}, {p['wins']}/{p['ties']}/{p['losses']})"
            )
    return out


def _verdict_sentence(s: EstimatorScores, e: str, field: str = "accuracy") -> str:
    c = _clear(s, e, field)
    means = [s.paired(t, n, e, field)["mean"] for t, n in s.noisy]
    parts = [
        f"clearly better in {len(c['better'])} of {len(s.noisy)} noisy cells"
        + (f" ({'; '.join(c['better'])})" if c["better"] else ""),
        f"clearly worse in {len(c['worse'])}"
        + (f" ({'; '.join(c['worse'])})" if c["worse"] else ""),
    ]
    return (
        f"{', '.join(parts)}; mean difference over the noisy cells "
        f"{_points(statistics.mean(means))} points (cells from {_points(min(means))} to "
        f"{_points(max(means))})"
    )


class ClaimError(ValueError):
    """The prose of a page's template says something its results no longer show."""


def _claim(holds: bool, what: str) -> None:
    if not holds:
        raise ClaimError(
            f"benchmarks/pages/estimators.md says {what}, but sklearn_estimators.json no longer "
            "shows it: rewrite that paragraph"
        )


def _best_of(s: EstimatorScores, t: str, n: str, among: Callable[[str], bool]) -> tuple[float, str]:
    return max((s.need(t, n, e), e) for e in s.estimators if among(e) and (t, n, e) in s.by)


def estimators_best(s: EstimatorScores) -> tuple[str, dict[str, list[tuple[str, str, float]]]]:
    """The table of the best estimator per cell, and per noise the cells whose best is a
    scikit-learn estimator, with slem's best minus scikit-learn's best."""
    rows, peer_wins = [], {}
    for t, n in s.cells:
        top_m, top_e = _best_of(s, t, n, lambda e: True)
        slem_m, slem_e = _best_of(s, t, n, lambda e: e in SLEM_ESTIMATORS)
        peer_m, peer_e = _best_of(s, t, n, lambda e: e not in SLEM_ESTIMATORS)
        kind = "clean" if n == "none" else "noisy"
        peer_wins.setdefault(kind, [])
        if top_e not in SLEM_ESTIMATORS:
            peer_wins[kind].append((_cell_name(t, n), top_e, slem_m - peer_m))
        rows.append(
            [
                t,
                NOISE_TITLES[n],
                f"{top_e} ({100 * top_m:.2f})",
                f"{slem_e} ({100 * slem_m:.2f})",
                f"{peer_e} ({100 * peer_m:.2f})",
                _points(slem_m - peer_m),
            ]
        )
    header = [
        "table",
        "noise",
        "best",
        "best of slem's",
        "best of scikit-learn's",
        "slem - sklearn",
    ]
    return table(header, rows), peer_wins


def _recall_order(s: EstimatorScores, t: str) -> list[int]:
    shares = s.info[t]["class_shares"]
    return sorted(range(len(shares)), key=lambda c: -shares[c])


def _recalls(s: EstimatorScores, t: str, n: str, e: str) -> list[float]:
    """Mean recall of each class over the pairs (classes in the table's order)."""
    per_row = s.values(t, n, e, "class_recall")
    return [statistics.mean(r[c] for r in per_row) for c in range(len(per_row[0]))]


def estimators_recall(s: EstimatorScores, t: str) -> str:
    """Recall of each class (largest first) and their mean (balanced accuracy) on ``t``."""
    order = _recall_order(s, t)
    noises = [n for tt, n in s.cells if tt == t]
    rows = []
    for e in s.estimators:
        row = [e]
        for n in noises:
            rec = _recalls(s, t, n, e)
            row.append(
                " / ".join(f"{100 * rec[c]:.0f}" for c in order)
                + f" ({100 * statistics.mean(rec):.1f})"
            )
        rows.append(row)
    return table(["estimator", *(NOISE_TITLES[n] for n in noises)], rows)


#: slem estimators' defaults the findings count steps with
VAL_FRACTION, BATCH_SIZE = 0.1, 64


def _n_train(s: EstimatorScores, t: str) -> int:
    """The median training-fold size of table ``t``."""
    return int(statistics.median(r["n_train"] for r in s.doc["rows"] if r["table"] == t))


def estimators_findings(s: EstimatorScores) -> dict[str, str]:
    """The generated statements of the findings (every number from the JSON), after checking
    what the template's prose says about them."""
    out: dict[str, str] = {}
    weighting = [e for e in s.estimators if e in SLEM_ESTIMATORS and e != s.baseline]
    learned = ["MW-Net", "CMW-Net"]
    peers = [e for e in s.estimators if e not in SLEM_ESTIMATORS]
    out["vs_erm"] = "\n".join(f"- **{e}**: {_verdict_sentence(s, e)}." for e in weighting)
    out["vs_erm_last"] = "\n".join(
        f"- **{e}**: {_verdict_sentence(s, e, 'accuracy_last_epoch')}." for e in weighting
    )

    # pair-flip digits: every weighting beats ERM and every scikit-learn estimator
    cell = ("digits", "pairflip")
    _claim(
        all(s.paired(*cell, e)["verdict"] == "better" for e in weighting),
        "every weighting estimator is clearly better than ERM on digits with pair-flip noise",
    )
    peer_m, peer_e = _best_of(s, *cell, lambda e: e in peers)
    out["digits_pair"] = (
        f"ERM {100 * s.need(*cell, s.baseline):.1f}, "
        + ", ".join(f"{e} {100 * s.need(*cell, e):.1f}" for e in weighting)
        + f"; the best of scikit-learn's, {peer_e}, {100 * peer_m:.1f}"
    )
    _claim(
        min(s.need(*cell, e) for e in weighting) > peer_m,
        "every weighting estimator beats every scikit-learn estimator on digits, pair-flip",
    )

    # symmetric noise: the weighting's differences (the estimators on ERM's schedule)
    same_schedule = [e for e in weighting if e != "zoo rule"]
    sym = [s.paired(t, n, e)["mean"] for t, n in s.noisy if n == "symmetric" for e in same_schedule]
    out["sym_range"] = f"{_points(min(sym))} to {_points(max(sym))}"
    _claim(
        all(
            s.paired(t, n, e)["mean"] >= 0
            for t, n in s.noisy
            if n == "symmetric" and t != "hpc"
            for e in same_schedule
        ),
        "the weighting's losses to ERM under symmetric noise are all on hpc",
    )

    # ERM's chosen epoch against its last one
    last = {
        (t, n): s.need(t, n, s.baseline, "accuracy_last_epoch") - s.need(t, n, s.baseline)
        for t, n in s.noisy
    }
    out["erm_last"] = "; ".join(f"{_cell_name(t, n)} {_points(d)}" for (t, n), d in last.items())
    out["erm_memorizes"] = "; ".join(_cell_name(*c) for c, d in last.items() if d < -0.01)

    # wine: MW-Net and CMW-Net are ERM at the chosen epoch
    ties = [
        NOISE_TITLES[n]
        for t, n in s.cells
        if t == "wine" and all(s.paired(t, n, e)["ties"] == s.paired(t, n, e)["n"] for e in learned)
    ]
    _claim(
        len(ties) == len([c for c in s.cells if c[0] == "wine"]),
        "MW-Net and CMW-Net predict as ERM on every wine pair",
    )
    epochs = [x for t, n in s.cells if t == "wine" for x in s.values(t, n, "MW-Net", "best_epoch")]
    out["wine_epoch"] = f"{statistics.median(epochs):g}"
    n_train = _n_train(s, "wine")
    n_val = round(VAL_FRACTION * n_train)
    batches = math.ceil((n_train - n_val) / BATCH_SIZE)
    out["wine_rows"] = (
        f"{n_train} training rows (about {n_train - n_val} after a validation split of about "
        f"{n_val}: {batches} batches an epoch)"
    )
    out["wine_val"] = f"about {n_val}"
    out["wine_steps"] = str(10 * batches)

    # wine: the last epoch beats the chosen one for every slem estimator
    gains = {
        e: [
            s.need("wine", n, e, "accuracy_last_epoch") - s.need("wine", n, e)
            for t, n in s.cells
            if t == "wine"
        ]
        for e in SLEM_ESTIMATORS
    }
    _claim(
        all(g > 0 for v in gains.values() for g in v),
        "on wine every slem estimator's last epoch beats its chosen epoch",
    )
    flat = [g for v in gains.values() for g in v]
    out["wine_last"] = f"{_points(min(flat))} to {_points(max(flat))}"

    # the zoo rule's 10 epochs on wine
    out["zoo_short"] = ", ".join(
        f"{NOISE_TITLES[n]} {100 * s.need(t, n, 'zoo rule'):.1f} against "
        f"{100 * s.need(t, n, 'zoo rule, 30 epochs'):.1f}"
        for t, n in s.cells
        if t == "wine"
    )
    _claim(
        all(
            s.paired(t, n, "zoo rule")["verdict"] == "worse"
            and s.paired(t, n, "zoo rule, 30 epochs")["verdict"] != "worse"
            for t, n in s.cells
            if t == "wine"
        ),
        "the zoo rule is clearly worse than ERM on wine with its 10 epochs and not with 30",
    )

    # hpc: the weighting takes the rare classes for noise
    order = _recall_order(s, "hpc")
    rare = order[-2:]
    names = s.info["hpc"].get("class_names") or [str(c) for c in order]

    def rare_recall(n: str, e: str) -> float:
        rec = _recalls(s, "hpc", n, e)
        return statistics.mean(rec[c] for c in rare)

    out["hpc_rare_classes"] = " and ".join(
        f"{names[c]} ({100 * s.info['hpc']['class_shares'][c]:.0f}%)" for c in rare
    )
    out["hpc_rare"] = ", ".join(
        f"{e} {100 * rare_recall('symmetric', e):.0f}%" for e in s.estimators
    )
    _claim(
        all(
            s.paired("hpc", "symmetric", e)["verdict"] == "worse"
            and rare_recall("symmetric", e) < rare_recall("symmetric", s.baseline)
            for e in learned
        ),
        "MW-Net and CMW-Net are clearly worse than ERM on hpc with symmetric noise and recall "
        "hpc's two rarest classes less than ERM",
    )
    hpc_noises = [n for t, n in s.cells if t == "hpc"]
    balanced = {
        n: {e: statistics.mean(_recalls(s, "hpc", n, e)) for e in s.estimators} for n in hpc_noises
    }
    _claim(
        all(max(b, key=b.__getitem__) == "gradient boosting" for b in balanced.values()),
        "gradient boosting has the best balanced accuracy on hpc under every noise",
    )
    out["hpc_balanced"] = "; ".join(
        f"{NOISE_TITLES[n]} {100 * b['gradient boosting']:.1f} against "
        f"{max((v, e) for e, v in b.items() if e != 'gradient boosting')[1]}'s "
        f"{100 * max(v for e, v in b.items() if e != 'gradient boosting'):.1f}"
        for n, b in balanced.items()
    )
    out["recall"] = estimators_recall(s, "hpc")
    shares = s.info["hpc"]["class_shares"]
    out["recall_classes"] = " / ".join(f"{names[c]} ({100 * shares[c]:.0f}%)" for c in order)

    # scikit-learn's estimators on clean labels, and what the noise costs
    best_table, peer_wins = estimators_best(s)
    out["best"] = best_table
    clean = [c for c in s.cells if c[1] == "none"]
    _claim(
        len(peer_wins.get("clean", [])) == len(clean),
        "a scikit-learn estimator is the best on clean labels on every table",
    )
    clean_best = {name.split(",")[0]: e for name, e, _ in peer_wins["clean"]}
    _claim(
        clean_best
        == {
            "breast_cancer": "logistic regression",
            "wine": "logistic regression",
            "digits": "gradient boosting",
            "hpc": "gradient boosting",
        },
        "logistic regression is the best on clean breast_cancer and wine, gradient boosting on "
        "clean digits and hpc",
    )
    out["clean_gap"] = ", ".join(
        f"{name.split(',')[0]} {_points(gap)} ({e})" for name, e, gap in peer_wins["clean"]
    )
    noisy_wins = peer_wins.get("noisy", [])
    out["peer_best"] = (
        f"{len(noisy_wins)} of {len(s.noisy)} noisy cells ("
        + "; ".join(f"{name}: {e}, {_points(-gap)} over slem's best" for name, e, gap in noisy_wins)
        + ")"
    )
    drops = []
    for e in s.estimators:
        d = [s.need(t, "none", e) - s.need(t, n, e) for t, n in s.noisy]
        drops.append((statistics.mean(d), e))
    drops.sort()
    out["noise_cost"] = ", ".join(f"{e} {100 * d:.1f}" for d, e in drops)
    _claim(drops[-1][1] == "gradient boosting", "noise costs gradient boosting the most")
    gb = "gradient boosting"
    out["gb_noise"] = ", ".join(
        f"{t} {100 * s.need(t, 'none', gb):.1f} -> {100 * s.need(t, 'symmetric', gb):.1f}"
        for t in s.info
        if (t, "symmetric", gb) in s.by
    )
    iterations = {
        r["iterations"] for rs in (v for k, v in s.by.items() if k[2] == gb) for r in rs.values()
    }
    _claim(iterations == {100}, "gradient boosting ran all its 100 iterations in every fit")

    # cost: median fit seconds over every row, relative to ERM
    def med_secs(e: str) -> float:
        return statistics.median(
            r["fit_seconds"] for (_, _, ee), rs in s.by.items() if ee == e for r in rs.values()
        )

    base = med_secs(s.baseline)
    out["time_ratio"] = ", ".join(f"{e} {sig(med_secs(e) / base, 2)}x" for e in s.others)
    return out


def estimators() -> str:
    doc = load("sklearn_estimators.json")
    s = EstimatorScores(doc)
    values = {
        "machine": estimators_machine(s),
        "tables": estimators_tables(s),
        "scores": str(s.count()),
        "acc:symmetric": estimators_accuracy(s, "symmetric", s.estimators),
        "acc:pairflip": estimators_accuracy(s, "pairflip", s.estimators),
        "acc:none": estimators_accuracy(s, "none", s.estimators),
        "paired": estimators_paired(s),
        "last": estimators_last_epoch(s),
        "paired_last": estimators_paired(s, "accuracy_last_epoch"),
        "time": estimators_time(s),
        **estimators_findings(s),
    }
    return fill("estimators", values, "benchmarks/results/sklearn_estimators.json")


# ---------------------------------------------------------------------- few-shot

#: the published sinusoid MSE (10-shot, one step) each learner is held to, and its source
FEW_SHOT_TARGETS = {"maml": 0.77, "metasgd": 0.53}


def _mean_std(entry: dict[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    if not entry:
        return "n/a"
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f}"


def few_shot_sinusoid(doc: dict[str, Any]) -> tuple[str, str]:
    rows = [
        "| learner | MSE (mean ± std over seeds) | per seed | target | train s / seed |",
        "|---|---|---|---|---|",
    ]
    table = doc.get("sinusoid", {})
    maml = table.get("maml", {}).get("mse", {}).get("mean")
    verdicts = []
    for learner, entry in table.items():
        per_seed = ", ".join(f"{r['mse']:.3f}" for r in entry["runs"])
        target = FEW_SHOT_TARGETS.get(learner)
        if target is not None:
            goal = f"<= {target}"
            met = entry["mse"]["mean"] <= target
        elif maml:
            goal = f"<= 1.2 x MAML = {1.2 * maml:.3f}"
            met = entry["mse"]["mean"] <= 1.2 * maml
        else:
            goal, met = "n/a", True
        verdicts.append(f"{learner} {'met' if met else 'missed'}")
        rows.append(
            f"| {learner} | {_mean_std(entry['mse'], 3)} | {per_seed} | {goal} | "
            f"{entry['train_seconds']['mean']:.0f} |"
        )
    return "\n".join(rows), "; ".join(verdicts)


FEW_SHOT_EVALS = [
    ("5w1s", "5-way 1-shot"),
    ("5w5s", "5-way 5-shot"),
    ("20w1s", "20-way 1-shot"),
    ("20w5s", "20-way 5-shot"),
]


def few_shot_omniglot(doc: dict[str, Any]) -> str:
    head = " | ".join(label for _, label in FEW_SHOT_EVALS)
    rows = [
        f"| learner | {head} | Lake 20 runs, error % | meta-train s / seed | s / meta step |",
        "|---|" + "---|" * (len(FEW_SHOT_EVALS) + 3),
    ]
    for learner, entry in doc.get("omniglot", {}).items():
        cells = [_mean_std(entry.get(f"acc_{key}")) for key, _ in FEW_SHOT_EVALS]
        rows.append(
            f"| {learner} | {' | '.join(cells)} | {_mean_std(entry.get('lake_error'), 1)} | "
            f"{entry['train_seconds']['mean']:.0f} | "
            f"{entry['seconds_per_meta_step']['mean']:.3f} |"
        )
    return "\n".join(rows)


def few_shot_speed(doc: dict[str, Any]) -> str:
    rows = [
        "| setting | tasks | vmap s | engine loop s | autograd loop s | vs engine loop | "
        "vs autograd loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc.get("speed", []):
        rows.append(
            f"| {r['setting']} | {r['tasks']} | {r['seconds_vmap']:.4f} | "
            f"{r['seconds_engine_loop']:.4f} | {r['seconds_autograd_loop']:.4f} | "
            f"{r['speedup_vs_engine_loop']:.2f}x | {r['speedup_vs_autograd_loop']:.2f}x |"
        )
    return "\n".join(rows)


def few_shot_memory(doc: dict[str, Any]) -> str:
    rows = doc.get("memory", [])
    steps = sorted({r["steps"] for r in rows})
    out = [
        "| method | " + " | ".join(f"{k} steps" for k in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["steps"]: r for r in rows if r["method"] == method}
        out.append(
            f"| {method} | "
            + " | ".join(
                f"{cells[k]['extra_mib']:.0f} MiB ({cells[k]['seconds']:.1f} s)"
                if k in cells
                else ""
                for k in steps
            )
            + " |"
        )
    return "\n".join(out)


def few_shot() -> str:
    doc = load("few_shot.json")
    sinusoid, verdicts = few_shot_sinusoid(doc)
    omniglot = doc.get("omniglot", {})
    config = {k: v.get("config", {}) for k, v in omniglot.items()}
    seeds = {
        len(v["runs"]) for part in ("sinusoid", "omniglot") for v in doc.get(part, {}).values()
    }
    return fill(
        "few_shot",
        {
            "sinusoid": sinusoid,
            "sinusoid_verdicts": verdicts,
            "omniglot": few_shot_omniglot(doc),
            "speed": few_shot_speed(doc),
            "memory": few_shot_memory(doc),
            "seeds": ", ".join(str(n) for n in sorted(seeds)),
            "omniglot_config": "; ".join(
                f"{k}: {c.get('ways')}-way {c.get('shots')}-shot, {c.get('queries')} queries per "
                f"class, tasks per meta step {c.get('task_batch')}, {c.get('hidden')} channels"
                for k, c in config.items()
            ),
        },
        "benchmarks/results/few_shot.json",
    )


# ---------------------------------------------------------------------- architecture search


def nas_top_cells(cells: list[dict[str, Any]], n: int = 10) -> str:
    rows = [
        [
            str(c["rank_test"]),
            f"`{c['genotype']}`",
            f"{c['test_acc']:.2f} ± {c['test_std']:.2f}",
            f"{c['val_acc']:.2f} ± {c['val_std']:.2f}",
            str(c["rank_val"]),
            f"{c['params']:,}",
        ]
        for c in cells[:n]
    ]
    header = ["rank", "cell", "test acc %", "val acc %", "rank by val", "parameters"]
    return table(header, rows)


def nas_darts(darts: dict[str, Any]) -> tuple[str, str, str]:
    settings = darts["settings"]["variants"]
    rows, verdicts, cells = [], [], []
    for name, v in darts["variants"].items():
        cost = v["cost_mean"]
        met = v["median_rank_test"] <= 12.5 and cost <= 3.0
        verdicts.append(
            f"{name}: median rank {v['median_rank_test']:g}, cost {cost:.1f}x, "
            f"{'met' if met else 'missed'}"
        )
        rows.append(
            [
                name,
                str(settings[name].get("epochs", "")),
                f"{v['median_rank_test']:g}",
                ", ".join(str(r) for r in v["ranks_test"]),
                ", ".join(str(r) for r in v["ranks_val"]),
                f"{v['in_top10pct']}/{v['seeds']}",
                f"{v['test_acc_mean']:.2f} ± {v['test_acc_std']:.2f}",
                f"{v['skip_share_mean']:.2f}",
                f"{v['supernet_val_mean']:.1f}",
                f"{cost:.2f}x ({v['search_cpu_seconds_mean']:.0f} CPU s)",
            ]
        )
        cells.append([name, "<br>".join(f"`{g}`" for g in v["genotypes"])])
    header = [
        "variant",
        "epochs",
        "median rank",
        "ranks (test)",
        "ranks (val)",
        "in top 10%",
        "found cell's test acc %",
        "skip share",
        "supernet val acc %",
        "cost (trainings)",
    ]
    return table(header, rows), "; ".join(verdicts), table(["variant", "cells"], cells)


def nas_memory(memory: dict[str, Any]) -> str:
    rows = [
        [name, f"{mib:.0f}", f"{memory['ratio_to_one_network'][name]:.2f}x"]
        for name, mib in memory["peak_mib"].items()
    ]
    return table(["run", "peak MiB above baseline", "vs one network"], rows)


def nas_cuda_memory(doc: dict[str, Any]) -> str:
    parts = []
    for setting, r in doc.items():
        rows = [
            [
                name,
                f"{mib:.0f}",
                f"{r['ratio_to_one_network'][name]:.2f}x",
                f"{1000 * r['seconds_per_step'][name]:.0f}",
            ]
            for name, mib in r["peak_mib"].items()
        ]
        header = ["run", "peak MiB", "vs one network", "ms per step"]
        parts.append(f"{setting} ({r['device']}, torch {r['torch']}):\n\n{table(header, rows)}")
    return "\n\n".join(parts)


def nas_blackbox(doc: dict[str, Any] | None) -> dict[str, str]:
    """The black-box page parts from ``nas_blackbox.json``: the tuning of REA's defaults
    (on cifar100), the one-objective regret at every budget with the tests, the published
    numbers, and the hypervolumes."""
    if not doc:
        missing = "(not measured yet: run `benchmarks/nas_blackbox.py`)"
        return dict.fromkeys(("bb_tune", "bb_single", "bb_published", "bb_multi"), missing)
    tune = [
        [
            str(r["population_size"]),
            str(r["sample_size"]),
            str(r["seeds"]),
            f"{r['mean']:.3f} ± {r['std']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
        ]
        for r in doc.get("tune", [])
    ]
    tune_multi = [
        [
            str(r["population_size"]),
            str(r["sample_size"]),
            str(r["seeds"]),
            f"{r['hv_mean']:.4f} ± {r['hv_std']:.4f}",
            f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]",
        ]
        for r in doc.get("tune_multi", [])
    ]
    single, tests = [], []
    for r in doc.get("single", []):
        if "p" in r:
            tests.append(f"- {r['method']}: p = {r['p']:.2g}")
            continue
        single.append(
            [
                r["method"],
                str(r["queries"]),
                str(r["seeds"]),
                f"{r['regret_mean']:.3f} ± {r['regret_std']:.3f}",
                f"[{r['regret_ci95'][0]:.3f}, {r['regret_ci95'][1]:.3f}]",
                f"{r['val_accuracy_mean']:.2f}",
            ]
        )
    multi, multi_tests = [], []
    for r in doc.get("multi", []):
        if "test" in r:
            multi_tests.append(f"- {r['objectives']}: {r['test']}: p = {r['p']:.2g}")
            continue
        multi.append(
            [
                r["objectives"],
                r["method"],
                str(r["trials"]),
                str(r["seeds"]),
                f"{r['hv_mean']:.4f} ± {r['hv_std']:.4f}",
                f"[{r['hv_ci95'][0]:.4f}, {r['hv_ci95'][1]:.4f}]",
            ]
        )
    published = ", ".join(
        f"{m} {a:.2f} ± {sd:.2f}" for m, (a, sd) in doc.get("published_table5", {}).items()
    )
    header = ["population", "tournament", "seeds"]
    return {
        "bb_tune": table([*header, "regret (points)", "95% CI"], tune)
        + "\n\n"
        + table([*header, "normalized hypervolume", "95% CI"], tune_multi),
        "bb_single": table(
            ["method", "queries", "seeds", "regret (points)", "95% CI", "val acc %"], single
        )
        + "\n\n"
        + "\n".join(tests),
        "bb_published": published,
        "bb_multi": table(
            ["objectives", "method", "trials", "seeds", "hypervolume / true front's", "95% CI"],
            multi,
        )
        + "\n\n"
        + "\n".join(multi_tests),
    }


def nas() -> str:
    doc = load("nas.json")
    cells = load("nas/mnist1d_cells.json")["cells"]
    darts = doc["darts"]
    t = darts["table"]
    darts_table, verdicts, found = nas_darts(darts)
    blackbox = load("nas_blackbox.json") if (RESULTS / "nas_blackbox.json").is_file() else None
    return fill(
        "nas",
        {
            "table_facts": (
                f"best {t['best_test_acc']:.2f}%, 13th {t['top10pct_cutoff']:.2f}%, median "
                f"{t['median_test_acc']:.2f}%; the seeds' std averages {t['mean_seed_std']:.2f} "
                "points per cell"
            ),
            "top_cells": nas_top_cells(cells),
            "reference_seconds": f"{darts['reference_training_cpu_seconds']:.1f}",
            "darts": darts_table,
            "darts_verdicts": verdicts,
            "darts_cells": found,
            "memory": nas_memory(doc["memory"]) if "memory" in doc else "(not measured)",
            "cuda_memory": nas_cuda_memory(doc.get("cuda_memory", {})),
            **nas_blackbox(blackbox),
        },
        "benchmarks/results/nas.json, nas/mnist1d_cells.json, nas_blackbox.json",
    )


# ---------------------------------------------------------------------- learning curves


def _pm(d: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def _verdict(t: dict[str, Any]) -> str:
    return "**met**" if t["pass"] else f"**missed** (short by {t['shortfall']:.3g})"


def curves() -> str:
    doc = load("curves.json")
    lc, pr = doc["lcdb"], doc["pruner"]
    s = lc["summary"]
    names = list(s["mae"])
    rows = []
    for m in names:
        cov = s["coverage"].get(m)
        rows.append(
            [m, _pm(s["mae"][m], 100), _pm(cov, 100, 1) if cov else "–",
             _pm(s["width"][m], 100) if m in s["width"] else "–"]
        )  # fmt: skip
    lcdb_table = table(
        ["method", "MAE (error points)", "90% interval coverage (%)", "median width (points)"],
        rows,
    )
    ps = pr["summary"]
    budgets = [str(b) for b in ps["budgets"]]
    prow = []
    for name in ("none", "median", "hyperband", "parametric", "h"):
        d = ps[name]
        prow.append(
            [name]
            + [f"{d['at'][b]['val']['mean']:.2f} ({d['at'][b]['test']['mean']:.2f})"
               for b in budgets]
            + [_pm(d["speedup"], 1, 1), _pm(d["gap_at_third"]), str(d["seeds_within_at_third"])]
        )  # fmt: skip
    pruner_table = table(
        ["pruner", *[f"best at {b} epochs (test)" for b in budgets],
         "speedup to reference", "gap at 1000 epochs", "seeds within 0.2"],
        prow,
    )  # fmt: skip
    lt, pt = s["targets"], ps["targets"]
    n_seeds = len(pr["per_seed"])
    tuned = ps["tuned_confidence"]
    return fill(
        "curves",
        {
            "n_curves": str(lc["n_curves"]),
            "n_datasets": str(lc["n_datasets"]),
            "lcdb_seeds": str(len(lc["per_seed"])),
            "lcdb_table": lcdb_table,
            "h_mae": f"{100 * lt['mae']['h']:.2f}",
            "best_parametric": lt["mae"]["best_parametric"],
            "param_mae": f"{100 * lt['mae']['parametric']:.2f}",
            "mae_verdict": _verdict(lt["mae"]),
            "h_coverage": f"{100 * lt['coverage']['h']:.1f}",
            "coverage_verdict": _verdict(lt["coverage"]),
            "study_seeds": str(n_seeds),
            "pruner_table": pruner_table,
            "reference": f"{statistics.fmean(r['reference'] for r in pr['per_seed']):.2f}",
            "tuned": ", ".join(f"{k} {v['chosen']}" for k, v in tuned.items()),
            "reach_verdict": _verdict(pt["reach"]),
            "beats_verdict": _verdict(pt["beats"]),
            "beats_numbers": (
                f"h {pt['beats']['h']:.2f}, median {pt['beats']['median']:.2f}, "
                f"Hyperband {pt['beats']['hyperband']:.2f}"
            ),
            "seconds": str(doc["seconds"]),
        },
        "benchmarks/results/curves.json",
    )


# ---------------------------------------------------------------------- the zoo


def zoo() -> str:
    """The zoo's page: its entries' model cards as a table (``slem zoo list``'s columns)."""
    spec = importlib.util.spec_from_file_location("zoo_card", ZOO / "cards.py")
    assert spec is not None and spec.loader is not None
    cards_module = importlib.util.module_from_spec(spec)  # stdlib only: no slem import
    spec.loader.exec_module(cards_module)
    cards = [json.loads(p.read_text()) for p in sorted(ZOO.glob("*/card.json"))]
    entries = cards_module.markdown_table(cards) if cards else "(no entries yet)"
    return fill("zoo", {"entries": entries}, "src/slem/zoo/*/card.json")


# ---------------------------------------------------------------------- hypergradient HPO


def _ms(d: dict[str, float], digits: int = 3, scale: float = 1.0) -> str:
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def hpo_gradient_offline(doc: dict[str, Any]) -> dict[str, str]:
    """The offline part: per-feature penalties against TPE on each table."""
    rows = []
    met = 0
    tables = doc["tables"]
    for name, t in tables.items():
        s = t["summary"]
        v = s["verdict"]
        met += bool(v["met"])
        first = t["seeds"][0]
        cv = s.get("hg_feature_prior_cv")
        speedup = s.get("step_speedup")
        rows.append(
            [
                f"{name} ({first['n_features']} features, {first['n_val']} val rows)",
                _ms(s["tpe"]["val_log_loss"]),
                _ms(s["hg_feature"]["val_log_loss"]),
                _ms(s["tpe"]["test_log_loss"]),
                _ms(s["hg_feature"]["test_log_loss"]),
                _ms(cv["test_log_loss"]) if cv else "–",
                _ms(s["tpe"]["seconds"], 1),
                _ms(s["hg_feature"]["seconds"], 2),
                _ms(s["time_ratio"], 3),
                f"{speedup['mean']:.0f}x" if isinstance(speedup, dict) else "–",
                "**met**" if v["met"] else "missed",
            ]
        )
    header = [
        "table",
        "val log-loss, TPE (1 penalty)",
        "val log-loss, per feature",
        "test log-loss, TPE",
        "test log-loss, per feature",
        "test log-loss, per feature + CV prior",
        "TPE s",
        "per-feature s",
        "time ratio",
        "per-step speedup vs L-BFGS + CG",
        "target",
    ]
    ridge_rows = []
    for name, t in doc.get("ridge", {}).items():
        s = t["summary"]
        ridge_rows.append(
            [
                f"{name} ({t['target']}), ridge",
                _ms(s["tpe"]["val_mse"], 2),
                _ms(s["hg_feature"]["val_mse"], 2),
                _ms(s["tpe"]["test_mse"], 2),
                _ms(s["hg_feature"]["test_mse"], 2),
                _ms(s["time_ratio"], 2),
            ]
        )
    ridge = (
        table(
            [
                "table",
                "val MSE, TPE",
                "val MSE, per feature",
                "test MSE, TPE",
                "test MSE, per feature",
                "time ratio",
            ],
            ridge_rows,
        )
        if ridge_rows
        else "(not measured)"
    )
    return {
        "offline_table": table(header, rows),
        "offline_met": f"{met} of {len(tables)}",
        "offline_settings": (
            f"seeds {doc['settings']['seeds']}, {doc['settings']['tpe_trials']} TPE trials, "
            f"penalties in {doc['settings']['bounds']}, validation split "
            f"{doc['settings']['val_fraction']:.0%} of train + validation, inner tolerance "
            f"{doc['settings']['inner_tol']:g}; "
            + doc["settings"]["tune_penalties"]
            + "; TPE: "
            + doc["settings"].get("tpe_solver", "the same inner solver")
        ),
        "offline_ridge": ridge,
    }


def hpo_gradient_online(doc: dict[str, Any]) -> dict[str, str]:
    """The online part: each start against the 30-trial TPE search, and the ablation."""
    s = doc["summary"]
    rows = [
        [
            "TPE, 30 trials (best by validation)",
            _ms(s["tpe_val"], 2),
            _ms(s["tpe_test"], 2),
            "–",
            "30",
            "–",
        ]
    ]
    for start, v in s["starts"].items():
        rows.append(
            [
                f"hypergradient from lr {start}",
                _ms(v["val"], 2),
                _ms(v["test"], 2),
                _ms(v["gap_to_tpe"], 2),
                _ms(v["cost_runs"], 2),
                f"{v['tuned_lr']['mean']:.3g} / {v['tuned_weight_decay']['mean']:.2g}",
            ]
        )
    online = table(
        [
            "search",
            "val acc (%)",
            "test acc (%)",
            "test gap to TPE (points)",
            "wall time / TPE trial's",
            "final lr / weight decay (mean)",
        ],
        rows,
    )
    per_seed = table(
        ["seed", "TPE best: lr, wd", "TPE test", *(f"from {k}: test" for k in s["starts"])],
        [
            [
                str(x["seed"]),
                f"{x['tpe']['lr']:.3g}, {x['tpe']['weight_decay']:.2g}",
                f"{x['tpe']['test']:.2f}",
                *(f"{r['test']:.2f}" for r in x["online"]),
            ]
            for x in doc["seeds"]
        ],
    )
    ablation_rows = [
        [
            "1 step (hypergradient descent)" if r["horizon"] == 1 else f"{r['horizon']} steps",
            f"{r['hyper_lr']:g}",
            "whole run" if r.get("memory", 0.0) == 1.0 else "restart",
            f"{r['start_lr']:g}",
            f"{r['val']:.2f}",
            f"{r['test']:.2f}",
            f"{r['tuned_lr']:.3g}",
            f"{r['tuned_weight_decay']:.2g}",
            f"{r['train_seconds']:.0f}",
        ]
        for r in doc.get("ablation", [])
    ]
    ablation = (
        table(
            [
                "update every",
                "Adam step",
                "tangents after an update",
                "start lr",
                "val acc",
                "test acc",
                "final lr",
                "final wd",
                "train s",
            ],
            ablation_rows,
        )
        if ablation_rows
        else "(not measured)"
    )
    t = s["target"]
    verdict = (
        f"every start within {-t['worst_mean_gap']:.2f} points of TPE (worst mean gap) at "
        f"{t['cost_runs']:.2f} training runs each: target **"
        + ("met" if t["met"] else "missed")
        + "**"
    )
    return {
        "online_table": online,
        "online_seeds": per_seed,
        "online_verdict": verdict,
        "online_ablation": ablation,
    }


def hpo_gradient() -> str:
    doc = load("hpo_gradient.json")
    return fill(
        "hpo_gradient",
        {**hpo_gradient_offline(doc["offline"]), **hpo_gradient_online(doc["online"])},
        "benchmarks/results/hpo_gradient.json",
    )


PAGES: dict[str, Callable[[], str]] = {
    "noisy_labels": noisy_labels,
    "loss_setting": loss_setting,
    "schedules": schedules,
    "learned_optimizers": learned_optimizers,
    "hpo": hpo,
    "hypergrad": hypergrad,
    "data_layer": data_layer,
    "cnn_speed": cnn_speed,
    "meta_cost": meta_cost,
    "virtual_step": virtual_step,
    "fast_mode": fast_mode,
    "zoo": zoo,
    "transfer": transfer,
    "distributed": distributed,
    "estimators": estimators,
    "few_shot": few_shot,
    "nas": nas,
    "curves": curves,
    "hpo_gradient": hpo_gradient,
}
#: pages written elsewhere than ``OUT/PAGE.md``
PAGE_FILES = {"zoo": ROOT / "docs" / "zoo.md"}


def images(page: str) -> dict[str, Path]:
    """The plots a page shows: name under ``docs/results/img/`` -> source file."""
    if page == "hpo":
        return {"hpo_regret.png": RESULTS / "hpo_regret.png"}
    if page == "nas":
        return {"nas_blackbox.png": RESULTS / "nas_blackbox.png"}
    if page == "curves":
        return {f"curves_{n}.png": RESULTS / "curves" / f"{n}.png"
                for n in ("lcdb_examples", "pruner_best_vs_epochs")}  # fmt: skip
    if page == "learned_optimizers":
        return {"bbo_regret.png": RESULTS / "learned_optimizers" / "bbo_regret.png"}
    if page == "schedules":
        targets = dict.fromkeys(r["target"] for r in load("schedules.json")["summary"])
        return {plot_name(t): RESULTS / "schedules" / plot_name(t) for t in targets}
    return {}


def render(page: str) -> dict[Path, bytes]:
    """Every file of ``page`` (its markdown and its plots): path -> content."""
    target = PAGE_FILES.get(page, OUT / f"{page}.md")
    files = {target: PAGES[page]().rstrip("\n").encode() + b"\n"}
    for name, source in images(page).items():
        files[OUT / "img" / name] = source.read_bytes()
    return files


def stale(files: dict[Path, bytes]) -> list[Path]:
    """The files whose content on disk differs from ``files``."""
    return [p for p, data in files.items() if not p.is_file() or p.read_bytes() != data]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pages", nargs="*", help=f"default: all of {', '.join(PAGES)}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page is out of date"
    )
    args = parser.parse_args(argv)
    for page in args.pages:
        if page not in PAGES:
            parser.error(f"unknown page '{page}'; choose from {', '.join(PAGES)}")
    files: dict[Path, bytes] = {}
    for page in args.pages or PAGES:
        files.update(render(page))
    changed = stale(files)
    if args.check:
        for path in changed:
            print(f"out of date: {_shown(path)}")
        return 1 if changed else 0
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[path])
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
