"""Every plot slem writes reads at a glance: a title, both axes labelled, a legend that lists
exactly the labelled series, whole-number ticks on axes that count (epochs, steps, trials,
queries) and no invisible series. Each kind is rendered from a small run (or, for the cases
a short run does not reach, a hand-made record) and inspected through
``slem.report.figure.INSPECT`` before it is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from slem.cli.app import app
from slem.report import figure, write_run_plots, write_study_plots
from slem.train.config import parse_train_config
from slem.train.record import RunRecord
from slem.train.run import train_run
from tests.test_report import full_record

#: words of an axis label that say it counts whole things
COUNTING = ("epoch", "step", "trial", "iteration", "query")


@dataclass
class Drawn:
    """What one figure shows, read from its matplotlib objects."""

    name: str
    title: str
    axes: list[dict[str, Any]] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)  # entries of every legend of the figure
    notes: list[str] = field(default_factory=list)  # legend titles
    texts: list[str] = field(default_factory=list)  # every text drawn in the axes


def _is_colorbar(ax: Any) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def read_figure(fig: Any, path: Path) -> Drawn:
    import matplotlib.lines as mlines

    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    axes = [ax for ax in fig.axes if not _is_colorbar(ax)]
    titles = [ax.get_title() for ax in axes]
    drawn = Drawn(path.name, suptitle or " / ".join(t for t in titles if t))
    legends = [ax.get_legend() for ax in axes] + list(fig.legends)
    for leg in legends:
        if leg is not None:
            drawn.legend += [t.get_text() for t in leg.get_texts()]
            drawn.notes.append(leg.get_title().get_text())
    for ax in axes:
        siblings = [a for a in axes if a is not ax and ax.get_shared_x_axes().joined(ax, a)]
        xlabel = ax.get_xlabel() or next((a.get_xlabel() for a in siblings if a.get_xlabel()), "")
        labels = ax.get_legend_handles_labels()[1]
        lines = [
            (h.get_label(), np.asarray(h.get_ydata(), dtype=float), h.get_marker())
            for h in ax.get_lines()
            if isinstance(h, mlines.Line2D) and not h.get_label().startswith("_")
        ]
        ticks: dict[str, list[float]] = {}
        for name, a, label in [
            ("x", ax, xlabel),
            *[("top", c, c.get_xlabel()) for c in ax.child_axes],
        ]:
            if any(word in label for word in COUNTING) and ax.get_xlabel():
                lo, hi = sorted(a.get_xlim())
                ticks[name] = [t for t in a.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]
        drawn.axes.append(
            {
                "title": ax.get_title(),
                "xlabel": xlabel,
                "ylabel": ax.get_ylabel(),
                "labels": labels,
                "lines": lines,
                "ticks": ticks,
                "tick_texts": [t.get_text() for t in ax.get_xticklabels()],
            }
        )
        drawn.texts += [t.get_text() for t in ax.texts]
    return drawn


@pytest.fixture()
def drawn() -> Iterator[dict[str, Drawn]]:
    """Every figure saved while the test runs, by file name (a later one of the same name
    replaces the earlier)."""
    seen: dict[str, Drawn] = {}

    def inspect(fig: Any, path: Path) -> None:
        seen[path.name] = read_figure(fig, path)

    figure.INSPECT.append(inspect)
    yield seen
    figure.INSPECT.remove(inspect)


def check_readable(d: Drawn) -> None:
    """The rules of every plot (see the module docstring)."""
    assert d.title.strip(), f"{d.name}: no title"
    labelled: list[str] = []
    for ax in d.axes:
        assert ax["xlabel"].strip(), f"{d.name}: an axes without an x label ({ax['title']!r})"
        assert ax["ylabel"].strip(), f"{d.name}: an axes without a y label ({ax['title']!r})"
        labelled += ax["labels"]
        for name, ticks in ax["ticks"].items():
            assert ticks, f"{d.name}: no ticks on the counting axis {ax['xlabel']!r}"
            assert all(float(t).is_integer() for t in ticks), f"{d.name} {name} ticks {ticks}"
        for label, y, marker in ax["lines"]:
            finite = np.isfinite(y)
            assert finite.any(), f"{d.name}: series {label!r} has no finite point"
            left = np.concatenate([[False], finite[:-1]])
            right = np.concatenate([finite[1:], [False]])
            if (finite & ~left & ~right).any():
                assert marker not in ("None", "", " ", None), (
                    f"{d.name}: series {label!r} has a point with no neighbour, drawn without "
                    "a marker (invisible)"
                )
    assert sorted(d.legend) == sorted(labelled), (
        f"{d.name}: legend {d.legend} is not the labelled series {labelled}"
    )
    assert all(text.strip() for text in d.legend), f"{d.name}: an empty legend entry"


def axes_with(d: Drawn, label_part: str) -> dict[str, Any]:
    (ax,) = [a for a in d.axes if any(label_part in lab for lab in a["labels"])]
    return ax


# ----------------------------------------------------------------------- hand-made records


def test_every_run_plot_of_a_full_record_is_readable(tmp_path: Path, drawn: Any) -> None:
    record = full_record()
    record.summary.update(method="mwnet", dataset="hand-made")
    record.info.update(
        val_labels="noisy",
        class_names=["cat", "dog", "bird"],
        class_counts=[40, 8, 2],
        class_groups=[0, 1, 1],
        weight_heads=3,  # a third head no class uses
        steps_per_epoch=10,
        lr_warmup_steps=10,
        meta_loss_label="meta loss: something measured",
    )
    paths = write_run_plots(record, tmp_path)
    assert sorted(drawn) == sorted(p.name for p in paths) and len(paths) == 9
    for d in drawn.values():
        check_readable(d)
    weights = drawn["weight_vs_loss.png"]
    assert weights.legend == ["group 0: class cat (n=40)", "group 1: classes dog, bird (n=10)"]
    assert any("group 2 empty" in note for note in weights.notes)
    adjuster = drawn["adjuster_vs_margin.png"]
    assert len(adjuster.legend) == 2  # two of the adjuster's two heads used
    curves = axes_with(drawn["learning_curves.png"], "val accuracy")
    assert curves["ylabel"] and "val accuracy (noisy labels)" in curves["labels"]
    lr = axes_with(drawn["lr_schedule.png"], "rate used")
    (trace,) = [y for label, y, _ in lr["lines"] if label.startswith("rate used")]
    np.testing.assert_array_equal(trace, record.arrays["lr_trace"])
    assert "top" in lr["ticks"]  # epochs on the top axis, whole numbers
    assert drawn["meta_training.png"].axes[0]["ylabel"] == "meta loss: something measured"


def test_one_epoch_and_regression_histories_are_readable(tmp_path: Path, drawn: Any) -> None:
    one = RunRecord(
        [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.9}],
        {"method": "erm", "dataset": "iris"},
        info={"val_labels": "clean"},
    )
    write_run_plots(one, tmp_path / "one")
    d = drawn["learning_curves.png"]
    check_readable(d)
    assert [
        t for ax in d.axes for t in ax["ticks"]["x"]
    ] and "val accuracy (clean labels)" in d.legend
    regression = RunRecord(
        [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "val_loss": 0.3,
                "val_mae": 50.0 - e,
                "train_meta_loss": 0.5,
            }
            for e in (1, 2, 3)
        ],
        {"method": "hwnet", "dataset": "diabetes"},
        info={"val_labels": "as_given"},
    )
    write_run_plots(regression, tmp_path / "regression")
    d = drawn["learning_curves.png"]
    check_readable(d)
    train, val = axes_with(d, "train loss"), axes_with(d, "val MAE")
    assert train is not val and "robust target units" in train["ylabel"]
    assert "target units" in val["ylabel"] and not any("val" in lab for lab in train["labels"])
    assert "val MAE (targets as given, may be noisy)" in val["labels"]


# ----------------------------------------------------------------------- small runs

TINY_LO = {
    "datasets": ["digits"],
    "dataset_size": 300,
    "widths": [8],
    "depths": [1],
    "activations": ["relu"],
    "horizon": 20,
    "unroll": 5,
    "batch_size": 64,
    "iterations": 4,
}
NOISY_DIGITS = {
    "name": "digits",
    "noise": "symmetric:0.3",
    "imbalance": 10,
    "meta_per_class": 3,
}
RUNS: dict[str, dict[str, Any]] = {
    "erm_one_epoch": {
        "method": "erm",
        "data": {"name": "iris", "noise": "symmetric:0.2"},
        "model": {"width": 8},
        "optim": {"epochs": 1},
    },
    "cmwnet": {
        "method": "cmwnet",
        "data": NOISY_DIGITS,
        "model": {"width": 16},
        "optim": {"epochs": 2, "batch_size": 64},
        "meta": {"warmup_epochs": 0, "n_groups": 3},
    },
    "joint": {
        "method": "joint",
        "joint": {"components": ["cmwnet", "loss_adjuster", "transition", "lr_schedule"]},
        "data": NOISY_DIGITS,
        "model": {"width": 16},
        "optim": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "meta": {"warmup_epochs": 1, "n_groups": 3},
    },
    "lr_schedule": {
        "method": "lr_schedule",
        "data": {"name": "iris", "meta_per_class": 5},
        "model": {"width": 8},
        "optim": {"epochs": 3, "batch_size": 32, "lr": 0.05},
    },
    "forward": {
        "method": "forward",
        "data": {"name": "iris", "noise": "symmetric:0.3"},
        "model": {"width": 8},
        "optim": {"epochs": 2},
        "loss": {"forward_warmup_epochs": 1},
    },
    "hwnet": {
        "method": "hwnet",
        "data": {"name": "diabetes", "noise": "mixture:0.3", "meta_size": 30},
        "model": {"width": 16},
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        "hwnet": {"mode": "mix", "losses": ["l2", "l1", "huber"]},
        "meta": {"warmup_epochs": 0},
    },
    "learned_optimizer": {
        "method": "learned_optimizer",
        "data": {"name": "digits", "size": 300},
        "optim": {"epochs": 1, "batch_size": 64},
        "learned_optimizer": TINY_LO,
    },
}


@pytest.mark.parametrize("name", list(RUNS))
def test_the_plots_of_a_small_run_are_readable(
    name: str, tmp_path: Path, drawn: Any, monkeypatch: Any
) -> None:
    import torch

    rates: list[float] = []  # the rate of every step the model's optimizer took
    step = torch.optim.SGD.step

    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        rates.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded)
    record, run_dir = train_run(
        parse_train_config({**RUNS[name], "threads": 1}), tmp_path / name, progress=False
    )
    paths = write_run_plots(record, run_dir)
    assert sorted(drawn) == sorted(p.name for p in paths)
    for d in drawn.values():
        check_readable(d)
    curves = drawn["learning_curves.png"]
    if name != "learned_optimizer":
        labels = "targets" if name == "hwnet" else "labels"
        noisy = "clean" if name == "lr_schedule" else "noisy"
        assert any(f"({noisy} {labels})" in text for text in curves.legend), curves.legend
    if "weight_vs_loss.png" in drawn:  # every class group the task has, named, or empty
        d = drawn["weight_vs_loss.png"]
        groups = len(set(record.info["class_groups"]))
        assert len(d.legend) == min(groups, record.info["weight_heads"])
        assert all("(n=" in text for text in d.legend), d.legend
        empty = record.info["weight_heads"] - len(d.legend)
        assert (empty > 0) == any("empty" in note for note in d.notes)
    if "lr_trace" in record.arrays:  # the plotted rate is the one each step used
        trace = record.arrays["lr_trace"]
        np.testing.assert_allclose(rates[: len(trace)], trace)
        (plotted,) = [
            y
            for label, y, _ in axes_with(drawn["lr_schedule.png"], "rate used")["lines"]
            if label.startswith("rate used")
        ]
        np.testing.assert_array_equal(plotted, trace)
    if name == "learned_optimizer":
        assert "log C" in drawn["meta_training.png"].axes[0]["ylabel"]


def test_bbo_plots_and_run_out(tmp_path: Path, drawn: Any, runner: Any) -> None:
    out = tmp_path / "bbo"
    train = ["bbo", "train", "--dim", "2", "--iterations", "3", "--steps", "4", "--loss", "oi"]
    res = runner.invoke(app, [*train, "--set", "batch_size=4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = drawn["meta_training.png"]
    check_readable(meta)
    assert "meta loss (oi)" in meta.axes[0]["ylabel"] and "log C" not in meta.axes[0]["ylabel"]

    regret_dir = tmp_path / "regret"
    res = runner.invoke(
        app,
        [
            "bbo",
            "run",
            str(out / "methodology"),
            "--function",
            "gp2",
            "--budget",
            "5",
            "--repeats",
            "3",
            "--out",
            str(regret_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    check_readable(drawn["regret_gp2.png"])
    assert drawn["regret_gp2.png"].axes[0]["ylabel"].startswith("simple regret")
    numbers = json.loads((regret_dir / "regret_gp2.json").read_text())
    assert numbers["budget"] == 5 and numbers["repeats"] == 3
    for searcher in ("learned_optimizer", "random_search"):
        per_search = np.array(numbers[searcher]["per_search"])
        assert per_search.shape == (3, 5) and (np.diff(per_search, axis=1) <= 1e-12).all()
        np.testing.assert_allclose(numbers[searcher]["mean_per_query"], per_search.mean(0))
    assert sorted(p.name for p in regret_dir.iterdir()) == ["regret_gp2.json", "regret_gp2.png"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "below"):
        res = runner.invoke(app, ["bbo", "run", str(out / "methodology"), "--out", str(bad)])
        assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
        assert "not a directory" in res.output


def test_study_plots_name_the_metric(tmp_path: Path, drawn: Any, runner: Any) -> None:
    from tests.test_automl import EXAMPLES

    out = tmp_path / "study"
    res = runner.invoke(
        app,
        [
            "hpo",
            str(EXAMPLES / "hpo_cash_breast_cancer.yaml"),
            "--trials",
            "8",
            "--quiet",
            "--set",
            "objective.families=[logreg,knn,svm]",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    names = ["optimization_history", "parallel_coordinates", "param_importances"]
    assert sorted(drawn) == [f"{n}.png" for n in names]
    assert sorted(p.name for p in (out / "plots").glob("*.html")) == [f"{n}.html" for n in names]
    for d in drawn.values():
        check_readable(d)
        words = [d.title, *d.legend, *d.texts, *(a["xlabel"] + a["ylabel"] for a in d.axes)]
        assert not any("Objective Value" in w for w in words), d.name
    assert "validation balanced accuracy" in drawn["optimization_history.png"].axes[0]["ylabel"]
    parallel = drawn["parallel_coordinates.png"]
    assert "None" not in parallel.texts  # a parameter a trial does not use has no category
    assert "validation balanced" in parallel.axes[0]["tick_texts"][0].replace("\n", " ")
    page = (out / "plots" / "parallel_coordinates.html").read_text()
    assert '"None"' not in page and "validation balanced accuracy" in page


def test_a_minimized_metric_is_labelled_as_such(tmp_path: Path, drawn: Any) -> None:
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        model = trial.suggest_categorical("model", ["a", "b"])
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        depth = trial.suggest_int("depth", 1, 4) if model == "b" else 0
        return lr + depth

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=6)
    write_study_plots(study, tmp_path, metric="val_loss")
    history = drawn["optimization_history.png"]
    check_readable(history)
    assert history.axes[0]["ylabel"] == "validation loss (cross-entropy, nats) (lower is better)"
