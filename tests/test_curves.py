"""slem.automl.curves, curve_model, curve_pruner: learning-curve extrapolation and the curve
pruner (synthetic curves and the committed MNIST-1D curve table; no lcdb, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from slem.automl.config import StudyConfig
from slem.automl.curve_model import (
    N_FEATURES,
    ParametricExtrapolator,
    features,
    load_curve_model,
    train_curve_model,
)
from slem.automl.curve_pruner import CurvePruner
from slem.automl.curves import (
    FAMILIES,
    extrapolate,
    family_predictions,
    fit_family,
    normalize,
)
from slem.automl.study_setup import make_pruner
from slem.errors import SlemError

TABLE = Path(__file__).parent.parent / "benchmarks" / "results" / "curves" / "mnist1d_curves.jsonl"


def power_law(x: np.ndarray, c: float = 0.1, a: float = 2.0, alpha: float = 0.5) -> np.ndarray:
    return c + a * x ** (-alpha)


def test_parametric_fits_recover_a_power_law() -> None:
    x = np.array([16, 23, 32, 45, 64, 91, 128, 181.0])
    horizon = 16384.0
    n = normalize(x, power_law(x), horizon, "minimize")
    fam = {f.name: f for f in FAMILIES}
    for polish in (False, True):
        pred, rmse = fit_family(fam["pow3"], n.x, n.y, polish)
        assert float(n.to_value(pred)) == pytest.approx(power_law(np.array(horizon))[()], rel=1e-3)
        assert rmse < 1e-6
    e = extrapolate(x, power_law(x), horizon)
    assert e.lower <= e.median <= e.upper
    assert abs(e.median - 0.1156) < 0.05


def test_fits_never_raise_on_bad_curves() -> None:
    for ys in ([0.5, 0.5, 0.5, 0.5], [0.1, 0.9, 0.1, 0.9], [1.0, 2.0, 3.0], [0.3]):
        x = np.arange(1, len(ys) + 1)
        e = extrapolate(x, ys, 30)
        assert np.isfinite([e.lower, e.median, e.upper]).all()
        preds = family_predictions(normalize(x, ys, 30, "maximize"))
        assert all(np.isfinite(p) for p, _ in preds.values())


def test_ensemble_intervals_cover_noisy_curves() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(1, 11, dtype=float)
    hits = 0
    for _ in range(40):
        c, a, alpha = rng.uniform(0.05, 0.3), rng.uniform(0.5, 1.5), rng.uniform(0.3, 1.0)
        truth = power_law(np.array(30.0), c, a, alpha)[()]
        noisy = power_law(steps, c, a, alpha) + rng.normal(0, 0.01, len(steps))
        e = extrapolate(steps, noisy, 30)
        hits += e.lower <= truth <= e.upper
    assert hits >= 32


def synthetic_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 31, dtype=float)
    feats, targets = [], []
    for _ in range(n):
        c, a, alpha = rng.uniform(50, 95), rng.uniform(20, 60), rng.uniform(0.2, 1.5)
        curve = c - a * steps ** (-alpha) + rng.normal(0, 0.5, 30)
        k = int(rng.integers(3, 15))
        norm = normalize(steps[:k], curve[:k], 30, "maximize")
        feats.append(features(norm))
        targets.append(float(norm.to_canonical(curve[-1])))
    return np.array(feats), np.array(targets)


def test_h_trains_and_beats_a_constant(tmp_path: Path) -> None:
    x, y = synthetic_pairs(300, 0)
    xt, yt = synthetic_pairs(100, 1)
    model = train_curve_model(x, y, calib=synthetic_pairs(60, 2), hidden=16, epochs=20)
    q = model.predict_features(xt)
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    assert np.mean(np.abs(q[:, 1] - yt)) < 0.8 * np.mean(np.abs(np.median(y) - yt))
    model.save(tmp_path / "m")
    again = load_curve_model(tmp_path / "m.json")
    assert np.allclose(again.predict_features(xt), q) and again.conformal == model.conformal
    with pytest.raises(SlemError, match="needs features"):
        train_curve_model(x[:, :3], y)


def test_shipped_model_predicts_ordered_quantiles() -> None:
    model = load_curve_model()
    rows = [json.loads(line) for line in TABLE.read_text().splitlines()[:20]]
    for r in rows:
        e = model.predict(range(1, 6), r["val_acc"][:5], 30, "maximize")
        assert np.isfinite([e.lower, e.median, e.upper]).all()
        assert e.lower <= e.median <= e.upper
    assert model.predict([1, 2, 3], [0.9, 0.6, 0.5], 10).median < 0.9
    assert load_curve_model().info["script"] == "benchmarks/curves.py"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: extrapolate([1, 2], [0.5], 10), "as many steps as values"),
        (lambda: extrapolate([2, 1], [0.5, 0.4], 10), "positive, increasing"),
        (lambda: extrapolate([1, 20], [0.5, 0.4], 10), "at most the horizon 10"),
        (lambda: extrapolate([1, 2], [0.5, float("nan")], 10), "finite"),
        (lambda: load_curve_model("/nonexistent/model"), "no curve model at"),
        (lambda: CurvePruner(30, confidence=1.5), "confidence must be in"),
        (lambda: CurvePruner(30, "magic"), "unknown extrapolator"),
    ],
)
def test_bad_inputs_are_one_line_slem_errors(call: Any, message: str) -> None:
    with pytest.raises(SlemError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("extrapolator", ["parametric", None])
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_pruner_stops_a_bad_curve_and_keeps_a_good_one(
    extrapolator: str | None, direction: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    steps = np.arange(1, 21, dtype=float)
    sign = 1.0 if direction == "maximize" else -1.0
    good = 90 - 60 * steps ** (-0.8)
    bad = 40 - 20 * steps ** (-0.8)
    curves = [good + 0.1 * i for i in range(5)] + [bad, good + 1.0]
    study = optuna.create_study(
        direction=direction, pruner=CurvePruner(20, extrapolator, n_startup_trials=5)
    )
    stopped: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        curve = sign * curves[trial.number]
        for s, v in zip(steps, curve, strict=True):
            trial.report(float(v), int(s))
            if trial.should_prune():
                stopped.append(int(s))
                raise optuna.TrialPruned()
        return float(curve[-1])

    study.optimize(objective, n_trials=len(curves))
    states = [t.state for t in study.trials]
    assert states[5] == optuna.trial.TrialState.PRUNED and stopped[0] <= 5
    assert states[6] == optuna.trial.TrialState.COMPLETE


def test_make_pruner_builds_the_curve_pruner() -> None:
    pruner = make_pruner(StudyConfig(pruner="curve"), [11, 33, 100])
    assert isinstance(pruner, CurvePruner) and pruner.horizon == 100
    assert pruner.n_warmup_steps == 2
    assert make_pruner(StudyConfig(pruner="curve"), list(range(1, 11))).n_warmup_steps == 3  # type: ignore[attr-defined]
    assert len(features(normalize([1, 2, 3], [3, 2, 1], 5, "minimize"))) == N_FEATURES


def test_pruner_predictions_are_used_for_steps_from_zero() -> None:
    study = optuna.create_study(
        direction="maximize",
        pruner=CurvePruner(9, ParametricExtrapolator(), n_startup_trials=1, n_warmup_steps=2),
    )
    t = study.ask()
    for s in range(10):
        t.report(0.9 + 0.001 * s, s)
    study.tell(t, 0.909)
    t = study.ask()
    for s, v in enumerate([0.1, 0.11, 0.12]):
        t.report(v, s)
    assert t.should_prune()


def test_cli_hpo_runs_a_cash_study_with_the_curve_pruner(runner: Any, tmp_path: Path) -> None:
    from slem.cli.app import app

    cash = str(Path(__file__).resolve().parents[1] / "examples" / "hpo_cash_breast_cancer.yaml")
    out = tmp_path / "study"
    args = ["--set", "study.pruner=curve", "--set", "objective.families=[logreg,knn]"]
    result = runner.invoke(app, ["hpo", cash, "--trials", "6", *args, "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == 6 and best["best_value"] > 0.85
