"""slem.automl: conditional spaces, CASH, samplers and pruners, the train objective, slem hpo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from slem.automl import SearchSpace, build_pipeline, cash_space, parse_hpo_config
from slem.automl.config import StudyConfig
from slem.automl.objectives import CashTrial, TrainTrial, fidelity_steps
from slem.automl.study import make_pruner, make_sampler, work
from slem.cli.app import app
from slem.errors import SlemError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SPACE = {
    "model": {"type": "categorical", "choices": ["a", "b"]},
    "lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "depth": {"type": "int", "low": 1, "high": 4, "when": {"model": ["b"]}},
    "width": {"type": "int", "low": 8, "high": 64, "step": 8, "when": {"model": "b"}},
}


def test_conditional_space_suggests_only_active_params() -> None:
    space = SearchSpace.from_mapping(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"a": 0, "b": 0}
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        seen[values["model"]] += 1
        assert ("depth" in values) == (values["model"] == "b") == ("width" in values)
        if "width" in values:
            assert values["width"] % 8 == 0
        study.tell(trial, values["lr"])
    assert seen["a"] > 0 and seen["b"] > 0
    assert space.active_config({"model": "a", "lr": 0.1, "depth": 3}) == {"model": "a", "lr": 0.1}
    grid = space.grid(3)
    assert grid["lr"] == pytest.approx([1e-3, 10**-1.5, 1.0]) and grid["width"][:2] == [8, 16]
    assert SearchSpace.from_mapping(space.to_mapping()).to_mapping() == space.to_mapping()


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({}, "the search space is empty"),
        ({"lr": {"type": "float", "low": 1.0, "high": 0.1}}, "param 'lr': low 1 is above high 0.1"),
        (
            {"lr": {"type": "float", "low": 0, "high": 1, "log": True}},
            "'lr': a log scale needs low > 0",
        ),
        ({"k": {"type": "int", "low": 1, "high": 2, "when": {"m": ["x"]}}}, "'k' depends on 'm'"),
        (
            {"m": ["x"], "k": {"low": 1, "high": 2, "when": {"m": ["y"]}}},
            "'m' never takes \\['y'\\]",
        ),
        ({"c": {"type": "categorical"}}, "'c': a categorical param needs"),
        ({"x": {"type": "float", "lo": 1}}, "'x': unknown key\\(s\\) lo"),
    ],
)
def test_bad_spaces_name_the_param(specs: dict[str, Any], message: str) -> None:
    with pytest.raises(SlemError, match=message):
        SearchSpace.from_mapping(specs)


@pytest.mark.parametrize("sampler", ["random", "grid", "tpe", "gp", "cmaes", "bohb"])
def test_every_sampler_runs_on_a_conditional_space(sampler: str) -> None:
    space = SearchSpace.from_mapping(SPACE)
    cfg = StudyConfig(sampler=sampler, seed=0)
    study = optuna.create_study(
        sampler=make_sampler(cfg, space), pruner=make_pruner(cfg, [1, 3, 9])
    )

    def objective(trial: optuna.Trial) -> float:
        v = space.suggest(trial)
        for step in (1, 3, 9):
            trial.report(v["lr"] * step, step)
        return float(v["lr"] + v.get("depth", 0))

    work(study, objective, total=6)
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_cash_space_covers_every_family_and_builds_pipelines() -> None:
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    space = cash_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    families = set()
    for _ in range(40):
        trial = study.ask()
        values = space.suggest(trial)
        families.add(values["family"])
        assert all(k == "family" or k == "scaler" or k.startswith(values["family"]) for k in values)
        study.tell(trial, 0.0)
    assert families == set(cash_space().params[0].choices)
    config = {
        "family": "svm",
        "scaler": "standard",
        "svm.C": 1.0,
        "svm.kernel": "poly",
        "svm.gamma": 0.1,
        "svm.degree": 2,
        "svm.class_weight": "balanced",
    }
    pipe = build_pipeline(config).fit(X, y)
    assert [name for name, _ in pipe.steps] == ["impute", "scale", "model"]
    assert pipe.named_steps["model"].degree == 2 and pipe.score(X, y) > 0.9
    with pytest.raises(SlemError, match=r"lacks 'svm\.kernel'"):
        build_pipeline({"family": "svm", "svm.C": 1.0})
    with pytest.raises(SlemError, match="families"):
        cash_space(["xgboost"])


def test_cash_with_hyperband_prunes_on_data_fractions() -> None:
    cfg = parse_hpo_config(
        {
            "study": {"sampler": "bohb", "trials": 14, "seed": 0},
            "objective": {
                "kind": "cash",
                "data": {"name": "breast_cancer"},
                "families": ["logreg", "knn"],
                "fidelity": "data_fraction",
            },
        }
    )
    assert fidelity_steps(1 / 9, 3) == pytest.approx([1 / 9, 1 / 3, 1.0])
    assert fidelity_steps(0.111, 3) == pytest.approx([0.111, 0.333, 1.0])
    objective = CashTrial(cfg.objective, 3, 0)
    assert objective.budgets == [11, 33, 100]
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(cfg.study, objective.space),
        pruner=make_pruner(cfg.study, objective.budgets),
    )
    work(study, objective, total=14)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    best = study.best_trial
    assert best.value > 0.85 and 0.0 < best.user_attrs["test_balanced_accuracy"] <= 1.0
    with pytest.raises(SlemError, match=r"objective\.fidelity data_fraction"):
        parse_hpo_config(
            {"study": {"pruner": "sha"}, "objective": {"kind": "cash", "data": {"name": "wine"}}}
        )


def test_train_objective_sets_config_keys_and_reports_epochs(tmp_path: Path) -> None:
    base = {
        "method": "erm",
        "data": {"name": "mnist1d", "size": 600},
        "model": {"width": 8},
        "optim": {"epochs": 3, "batch_size": 64},
    }
    bad = parse_hpo_config(
        {"objective": {"kind": "train", "base": base, "space": {"optim.lrr": [0.1]}}}
    )
    with pytest.raises(SlemError, match=r"param 'optim\.lrr': optim\.lrr: Extra inputs"):
        TrainTrial(bad.objective)
    cfg = parse_hpo_config(
        {
            "objective": {
                "kind": "train",
                "base": base,
                "space": {
                    "optim.lr": {"low": 0.01, "high": 0.2, "log": True},
                    "model.width": [8, 16],
                },
            }
        }
    )
    objective = TrainTrial(cfg.objective)
    assert objective.epochs == 3
    study = optuna.create_study(direction="maximize")
    work(study, objective, total=2)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert 0.0 <= trial.user_attrs["test_accuracy"] <= 1.0


def test_cli_hpo_writes_results_plots_and_resumes(runner: Any, tmp_path: Path) -> None:
    out = tmp_path / "study"
    cash = str(EXAMPLES / "hpo_cash_breast_cancer.yaml")
    small = ["--set", "objective.families=[logreg,knn]", "--quiet", "--out", str(out)]
    result = runner.invoke(app, ["hpo", cash, "--trials", "4", *small])
    assert result.exit_code == 0, result.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == 4 and best["best_params"]["family"] in ("logreg", "knn")
    assert "test_balanced_accuracy" in best["best_test"]
    for name in ("optimization_history", "parallel_coordinates"):
        assert (out / "plots" / f"{name}.png").is_file() and (
            out / "plots" / f"{name}.html"
        ).is_file()
    assert yaml.safe_load((out / "hpo.yaml").read_text())["provenance"]["slem"]
    again = runner.invoke(app, ["hpo", cash, "--trials", "4", *small])
    assert again.exit_code == 2 and "already holds a study" in again.stderr
    more = runner.invoke(app, ["hpo", cash, "--trials", "6", "--resume", *small])
    assert more.exit_code == 0, more.stderr
    assert json.loads((out / "best.json").read_text())["trials"] == 6


def test_cli_hpo_bad_inputs_are_one_line(runner: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"objective:\n  kind: train\n  base: {EXAMPLES / 'erm_mnist1d.yaml'}\n"
        "  space:\n    optim.lr: {low: 0.5, high: 0.1}\n"
    )
    result = runner.invoke(app, ["hpo", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: search space param 'optim.lr': low 0.5 is above high 0.1"
    ]
    result = runner.invoke(
        app,
        [
            "hpo",
            str(EXAMPLES / "hpo_cash_breast_cancer.yaml"),
            "--out",
            str(tmp_path / "p"),
            "--storage",
            "mysql://nobody@127.0.0.1:1/none",
        ],
    )
    assert result.exit_code == 2 and "cannot open the study storage" in result.stderr


# ---------------------------------------------------------------------- meta-learning


def synthetic_store() -> Any:
    """Two kinds of task: for 'a' tasks (feature f ~ 0) family x wins, for 'b' tasks (f ~ 10)
    family y wins; the store holds trials and cross-task scores."""
    from slem.automl.meta import MetaStore

    store = MetaStore()
    candidates = [
        {"family": "x", "lr": 0.01},
        {"family": "y", "lr": 0.1},
        {"family": "y", "lr": 1.0},
    ]
    for i in range(8):
        kind = "a" if i % 2 == 0 else "b"
        f = (0.0 if kind == "a" else 10.0) + 0.1 * i
        good = "x" if kind == "a" else "y"
        trials = [
            {"params": {"family": fam, "lr": lr}, "value": (0.9 if fam == good else 0.6) - 0.01 * j}
            for j, (fam, lr) in enumerate([("x", 0.01), ("y", 0.1), ("x", 0.03), ("y", 1.0)])
        ]
        store.add(f"{kind}{i}", {"f": f, "g": 1.0}, trials)
        store.scores[f"{kind}{i}"] = [0.9 if c["family"] == good else 0.6 for c in candidates]
    store.candidates = candidates
    return store


def test_meta_store_warm_start_zero_shot_and_portfolio(tmp_path: Path) -> None:
    from slem.automl.meta import MetaStore, ZeroShot, portfolio, warm_start_configs

    store = synthetic_store()
    path = store.save(tmp_path / "md.json")
    store = MetaStore.load(path)
    assert len(store.tasks) == 8 and store.record("a0").best(1) == [{"family": "x", "lr": 0.01}]
    near = store.nearest({"f": 0.05, "g": 1.0}, 2)
    assert [n for n, _ in near] == ["a0", "a2"] and near[0][1] <= near[1][1]
    assert warm_start_configs(store, {"f": 10.2}, k=2)[0]["family"] == "y"
    assert store.nearest({"f": 0.0}, 1, exclude=["a0"])[0][0] == "a2"
    model = ZeroShot().fit(store, exclude=["a0", "b1"])
    assert model.propose({"f": 0.0, "g": 1.0})["family"] == "x"
    assert model.propose({"f": 10.1, "g": 1.0})["family"] == "y"
    chosen = portfolio(store, 2)
    assert {c["family"] for c in chosen} == {"x", "y"}  # one per kind of task covers all
    with pytest.raises(SlemError, match="no meta-dataset"):
        MetaStore.load(tmp_path / "missing.json")


def test_cli_meta_dataset_then_warm_started_cash(runner: Any, tmp_path: Path) -> None:
    md = tmp_path / "md.json"
    result = runner.invoke(
        app, ["meta-dataset", "--trials", "3", "--tables", "2", "--out", str(md)]
    )
    assert result.exit_code == 0, result.stderr
    assert "2 tasks" in result.stdout
    out = tmp_path / "study"
    result = runner.invoke(
        app,
        [
            "hpo",
            str(EXAMPLES / "hpo_cash_breast_cancer.yaml"),
            "--out",
            str(out),
            "--quiet",
            "--trials",
            "3",
            "--set",
            f"study.meta_dataset={md}",
            "--set",
            "study.warm_start=1",
            "--set",
            "study.zero_shot=1",
            "--set",
            "objective.data.name=iris",
            "--set",
            "objective.fidelity=none",
            "--set",
            "study.sampler=tpe",
        ],
    )
    assert result.exit_code == 0, result.stderr
    study = optuna.load_study(study_name="cash-breast-cancer", storage=f"sqlite:///{out}/study.db")
    first = study.trials[0]
    assert first.system_attrs.get("fixed_params"), "the first trial came from the meta-dataset"
