"""An HPO study ends with exactly the distinct trials the user asked for: whatever the number
of workers (1, 2, 3) and machines (SQLite, a real PostgreSQL server), crashes (SIGKILL of a
worker or of the parent) and restarts (--resume), the study holds N finished trials, no
configuration evaluated twice unless the space has fewer points; the grid of a conditional
space is its distinct active configurations. Also: the run-dir lock, nothing written before
the spec is valid, the meta-dataset never written into the package, piped and --quiet output,
and damaged files read back (study database, hpo.yaml, meta-dataset) as one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from slem.automl.cash import cash_space
from slem.automl.config import CashObjective, StudyConfig
from slem.automl.objectives import CashTrial
from slem.automl.space import SearchSpace
from slem.automl.study import (
    SKIPPED,
    StudyFailed,
    config_key,
    make_sampler,
    open_storage,
    run_trial,
    tally,
    work,
)
from slem.cli.app import app
from slem.errors import SlemError
from tests.postgres_server import postgres_url  # noqa: F401

pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore::UserWarning"
)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL
WAIT = 120.0  # seconds: deadline of any one wait on a process
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def cash(families: tuple[str, ...] = ("logreg", "knn")) -> CashTrial:
    return CashTrial(
        CashObjective.model_validate(
            {"kind": "cash", "data": {"name": "breast_cancer"}, "families": list(families)}
        )
    )


def memory_study(cfg: StudyConfig, objective: Any) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=make_sampler(cfg, objective.space))


def finished_configs(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [config_key(t.params) for t in study.get_trials(deepcopy=False, states=FINISHED)]


def assert_exact(study: optuna.Study, n: int) -> None:
    """``n`` finished trials, all distinct, none left running."""
    configs = finished_configs(study)
    assert len(configs) == n
    assert len(set(configs)) == n, "a configuration was evaluated twice"
    assert not study.get_trials(deepcopy=False, states=(RUNNING,))


# ---------------------------------------------------------------------- grid and duplicates


def test_grid_of_a_conditional_space_is_its_distinct_active_configurations() -> None:
    space = cash_space(["logreg", "knn"])
    grid = space.grid_configurations(3)
    # logreg: 4 scalers x 3 C x 2 class weights; knn: 4 scalers x 3 k x 2 weights
    assert len(grid) == 48 and len({config_key(c) for c in grid}) == 48
    for c in grid:  # only the family's own params, never another family's
        other = "knn" if c["family"] == "logreg" else "logreg"
        assert not any(k.startswith(other) for k in c)
    objective = cash()
    cfg = StudyConfig(sampler="grid", grid_points=3, seed=0)
    study = memory_study(cfg, objective)
    work(study, objective, total=12)
    assert_exact(study, 12)
    assert not study.get_trials(deepcopy=False, states=(FAIL,))
    more = memory_study(cfg, objective)
    work(more, objective, total=60)  # more trials than grid points: every point once
    assert_exact(more, 48)
    assert set(finished_configs(more)) == {config_key(c) for c in grid}


def test_grid_too_large_is_one_line_error() -> None:
    space = SearchSpace.from_mapping(
        {f"p{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(9)}
    )
    with pytest.raises(SlemError, match="the grid has more than 100000 points"):
        make_sampler(StudyConfig(sampler="grid", grid_points=5), space)


class Finite:
    """An objective over a finite conditional space (4 configurations)."""

    space = SearchSpace.from_mapping(
        {"a": ["x", "y"], "k": {"type": "int", "low": 1, "high": 3, "when": {"a": ["y"]}}}
    )

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def run(self, trial: Any, values: dict[str, Any]) -> float:
        self.calls.append(values)
        return float(values.get("k", 0))


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "grid"])
def test_finite_space_never_evaluates_a_configuration_twice(sampler: str) -> None:
    objective = Finite()
    assert objective.space.finite_size() == 4
    study = memory_study(StudyConfig(sampler=sampler, seed=0), objective)
    work(study, objective, total=10)  # asks for more than the space holds
    assert_exact(study, 4)
    assert len(objective.calls) == 4
    assert {config_key(c) for c in objective.calls} == {
        (("a", "x"),),
        (("a", "y"), ("k", 1)),
        (("a", "y"), ("k", 2)),
        (("a", "y"), ("k", 3)),
    }


def test_same_seed_in_every_worker_gives_distinct_trials() -> None:
    """Two workers (two sampler objects from the same config, the old bug) on one study."""
    objective = cash()
    cfg = StudyConfig(sampler="random", seed=0)
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(
        storage=storage,
        study_name="s",
        direction="maximize",
        sampler=make_sampler(cfg, objective.space),
    )
    b = optuna.load_study(
        storage=storage, study_name="s", sampler=make_sampler(cfg, objective.space)
    )
    for _ in range(4):  # interleaved, as two processes would
        run_trial(a, objective, target=8)
        run_trial(b, objective, target=8)
    assert_exact(a, 8)


def test_surplus_trial_of_a_racing_worker_is_skipped_unevaluated() -> None:
    """Two trials already running and one finished: a third worker's trial would be the
    4th of 3, so it is skipped (FAIL with a 'skipped' note) and the objective never runs."""
    objective = Finite()
    study = memory_study(StudyConfig(sampler="random"), objective)
    study.tell(study.ask(), 1.0)
    study.ask(), study.ask()  # two trials of other workers, running
    assert run_trial(study, objective, target=3) == "surplus"
    last = study.trials[-1]
    assert last.state == FAIL and last.user_attrs[SKIPPED].startswith("surplus")
    assert objective.calls == []
    assert tally(study).skipped == 1 and tally(study).failed == 0


def test_failed_trials_are_replaced_and_a_broken_objective_stops() -> None:
    def flaky(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number % 3 == 1:
            raise RuntimeError("flaky")
        return x

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    work(study, flaky, total=6)
    n = tally(study)
    assert (n.finished, n.failed) == (6, 3)  # trials 1, 4, 7 failed and were replaced
    errors = [t.user_attrs["error"] for t in study.trials if t.state == FAIL]
    assert errors == ["RuntimeError: flaky"] * 3

    def broken(trial: optuna.Trial) -> float:
        raise ValueError("no data")

    study = optuna.create_study()
    with pytest.raises(StudyFailed, match=r"4 trials failed .*ValueError: no data"):
        work(study, broken, total=4)
    assert len(study.trials) == 4


def test_stale_trial_is_failed_and_replaced(tmp_path: Path) -> None:
    """A RUNNING trial whose worker died (no heartbeat past the grace period) is failed
    before counting, and a replacement runs."""
    cfg = StudyConfig(name="stale", sampler="random", heartbeat=1, grace_period=1)
    url = f"sqlite:///{tmp_path}/s.db"
    storage = open_storage(url, cfg)
    objective = Finite()
    study = optuna.create_study(
        storage=storage, study_name="stale", sampler=make_sampler(cfg, objective.space)
    )
    dead = study.ask()
    dead.suggest_categorical("a", ["x", "y"])
    storage.record_heartbeat(dead._trial_id)  # type: ignore[attr-defined]
    time.sleep(2.5)  # past the grace period
    work(study, objective, total=3)
    assert study.trials[0].state == FAIL and "error" not in study.trials[0].user_attrs
    assert tally(study).lost == 1
    assert_exact(study, 3)


# ---------------------------------------------------------------------- the CLI, many workers


def slem(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slem.cli.app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def cash_config(tmp_path: Path, name: str, sampler: str = "random") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"study: {{name: {name}, sampler: {sampler}, trials: 6, seed: 0}}\n"
        "objective: {kind: cash, data: {name: breast_cancer}, families: [logreg, knn]}\n"
    )
    return path


@pytest.mark.parametrize(
    ("workers", "storage"),
    [
        (1, "sqlite"),
        (2, "sqlite"),
        (3, "sqlite"),
        (1, "postgres"),
        (2, "postgres"),
        (3, "postgres"),
    ],
)
def test_cli_study_ends_with_exactly_n_distinct_trials(
    workers: int, storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = f"n-{workers}-{storage}"
    config = cash_config(tmp_path, name)
    out = tmp_path / "run"
    extra: list[str] = []
    url = f"sqlite:///{out}/study.db"
    if storage == "postgres":
        url = request.getfixturevalue("postgres_url")
        extra = ["--storage", url]
    done = slem("hpo", str(config), "--out", str(out), "--workers", str(workers), "--quiet", *extra)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    study = optuna.load_study(study_name=name, storage=open_storage(url, StudyConfig()))
    assert_exact(study, 6)
    best = json.loads((out / "best.json").read_text())
    assert (best["trials"], best["planned"], best["failed"], best["running"]) == (6, 6, 0, 0)


def test_cli_two_machines_on_one_postgres_study(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Two `slem hpo --storage ... --workers 2` at once (as on two machines): one study of
    exactly N distinct trials."""
    config = cash_config(tmp_path, "two-machines")
    cmd = [sys.executable, "-m", "slem.cli.app", "hpo", str(config), "--storage", postgres_url]
    procs = [
        subprocess.Popen(
            [*cmd, "--out", str(tmp_path / f"m{i}"), "--workers", "2", "--quiet", "--trials", "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = optuna.load_study(
        study_name="two-machines", storage=open_storage(postgres_url, StudyConfig())
    )
    assert_exact(study, 10)


# ---------------------------------------------------------------------- SIGKILL and --resume

SLOW = {"optim.lr": 0.1, "optim.epochs": 100000}  # a trial that runs until it is killed


def train_config(tmp_path: Path, name: str, trials: int = 3) -> tuple[Path, str]:
    """A small `slem train` study whose first trial (enqueued, out of range) never ends,
    in an SQLite storage given with --storage."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": name,
                    "sampler": "random",
                    "trials": trials,
                    "seed": 0,
                    "heartbeat": 1,
                    "grace_period": 2,
                },
                "objective": {
                    "kind": "train",
                    "base": {
                        "method": "erm",
                        "data": {"name": "mnist1d", "size": 300},
                        "model": {"arch": "mlp", "width": 8},
                        "optim": {"epochs": 1, "batch_size": 64},
                    },
                    "space": {
                        "optim.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                        "optim.epochs": {"type": "int", "low": 1, "high": 2},
                    },
                },
            }
        )
    )
    url = f"sqlite:///{tmp_path}/{name}.db"
    study = optuna.create_study(
        study_name=name, storage=open_storage(url, StudyConfig()), direction="maximize"
    )
    study.enqueue_trial(SLOW)
    return config, url


def wait_running(url: str, name: str) -> optuna.trial.FrozenTrial:
    """Trial 0 once it runs with its params set (its heartbeat has started)."""
    deadline = time.monotonic() + WAIT
    storage = open_storage(url, StudyConfig())
    while time.monotonic() < deadline:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        if trials and trials[0].state == RUNNING and len(trials[0].params) == 2:
            return trials[0]
        time.sleep(0.2)
    raise AssertionError("the slow trial did not start")


def gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def start(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [sys.executable, "-m", "slem.cli.app", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    procs.append(p)
    return p


def assert_lost_and_replaced(url: str, name: str, n: int, lost: int = 1) -> None:
    study = optuna.load_study(study_name=name, storage=open_storage(url, StudyConfig()))
    assert_exact(study, n)
    first = study.trials[0]
    assert first.state == FAIL and first.params == SLOW  # the killed trial
    assert (tally(study).lost, tally(study).failed) == (lost, 0)


def test_sigkill_parent_during_trial_then_resume(tmp_path: Path, procs: Any) -> None:
    config, url = train_config(tmp_path, "kill-parent")
    out = tmp_path / "run"
    parent = start(procs, "hpo", str(config), "--storage", url, "--out", str(out), "--quiet")
    wait_running(url, "kill-parent")
    parent.send_signal(signal.SIGKILL)
    parent.wait(WAIT)
    done = slem("hpo", str(config), "--storage", url, "--out", str(out), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "3/3 finished trials" in done.stdout and "1 lost" in done.stdout
    assert_lost_and_replaced(url, "kill-parent", 3)
    best = json.loads((out / "best.json").read_text())
    assert (best["trials"], best["lost"], best["running"]) == (3, 1, 0)


def test_sigkill_of_a_worker_is_replaced_by_the_others(tmp_path: Path) -> None:
    config, url = train_config(tmp_path, "kill-worker")
    out = tmp_path / "run"
    args = ["hpo", str(config), "--storage", url, "--out", str(out), "--workers", "2", "--quiet"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "slem.cli.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        trial = wait_running(url, "kill-worker")
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 0, stderr
    assert "worker exit codes" in stderr and "-9" in stderr
    assert "3/3 finished trials" in stdout
    assert_lost_and_replaced(url, "kill-worker", 3)


def test_sigkill_parent_of_workers_stops_them_then_resume(tmp_path: Path, procs: Any) -> None:
    config, url = train_config(tmp_path, "kill-parent-workers")
    out = tmp_path / "run"
    parent = start(
        procs, "hpo", str(config), "--storage", url, "--out", str(out), "--workers", "2", "--quiet"
    )
    trial = wait_running(url, "kill-parent-workers")
    pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
    parent.send_signal(signal.SIGKILL)
    parent.wait(WAIT)
    assert gone(pid), "a worker outlived its killed parent"
    done = slem("hpo", "--out", str(out), "--resume", "--storage", url, "--quiet")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(
        study_name="kill-parent-workers", storage=open_storage(url, StudyConfig())
    )
    busy = [t.number for t in study.trials if t.state == FAIL]  # running when the parent died
    assert 0 in busy and len(busy) <= 2  # the slow trial, and the other worker's, if any
    assert_lost_and_replaced(url, "kill-parent-workers", 3, lost=len(busy))


# ---------------------------------------------------------------------- resume: unsafe is an error


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


def test_resume_that_cannot_be_safe_is_one_line_error(runner: Any, tmp_path: Path) -> None:
    config = cash_config(tmp_path, "safe")
    out = tmp_path / "run"
    args = ["hpo", str(config), "--out", str(out), "--quiet", "--trials", "2"]
    assert runner.invoke(app, args).exit_code == 0
    # another search in the same run directory
    line = one_line_error(
        runner.invoke(app, [*args, "--resume", "--set", "objective.families=[knn]"])
    )
    assert "differs from the study" in line and "objective.families" in line
    # another storage than the study's
    line = one_line_error(
        runner.invoke(app, [*args, "--resume", "--storage", f"sqlite:///{tmp_path}/x.db"])
    )
    assert "lives in" in line and "no --storage" in line
    # nothing to resume
    line = one_line_error(runner.invoke(app, ["hpo", "--resume", "--out", str(tmp_path / "no")]))
    assert "holds no study" in line
    # more trials: resumes, and the new total is kept for the next --resume
    more = runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--quiet", "--trials", "3"])
    assert more.exit_code == 0, more.stderr
    assert yaml.safe_load((out / "hpo.yaml").read_text())["study"]["trials"] == 3
    again = runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "3/3 finished trials" in again.stdout


# ---------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["truncate", "garbage", "half"])
def test_damaged_study_database_is_one_line_error(runner: Any, tmp_path: Path, damage: str) -> None:
    config = cash_config(tmp_path, "db")
    out = tmp_path / "run"
    assert (
        runner.invoke(
            app, ["hpo", str(config), "--out", str(out), "--quiet", "--trials", "2"]
        ).exit_code
        == 0
    )
    db = out / "study.db"
    data = db.read_bytes()
    if damage == "truncate":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(os.urandom(len(data)))
    else:  # the SQLite header survives, the pages do not
        db.write_bytes(data[:100] + os.urandom(len(data) - 100))
    result = runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--quiet", "--trials", "3"])
    line = one_line_error(result)
    assert str(db) in line and ("start the study again" in line or "restore it" in line)


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe garbage", b"study: [1, 2\n", b"- 1\n"])
def test_damaged_hpo_yaml_is_one_line_error(runner: Any, tmp_path: Path, content: bytes) -> None:
    config = cash_config(tmp_path, "yaml")
    out = tmp_path / "run"
    assert (
        runner.invoke(
            app, ["hpo", str(config), "--out", str(out), "--quiet", "--trials", "2"]
        ).exit_code
        == 0
    )
    (out / "hpo.yaml").write_bytes(content)
    line = one_line_error(runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--quiet"]))
    assert str(out / "hpo.yaml") in line and "another --out" in line


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x89PNG\x00\xff",
        b'{"tasks": [',
        b"[]",
        b'{"tasks": [{"name": 1}]}',
        b'{"tasks": [], "candidates": [{}], "scores": {"t": [0.5]}}',
    ],
)
def test_damaged_meta_dataset_is_one_line_error(
    runner: Any, tmp_path: Path, content: bytes
) -> None:
    from slem.automl.meta import MetaStore

    md = tmp_path / "md.json"
    md.write_bytes(content)
    with pytest.raises(
        SlemError, match=r"the meta-dataset .*md.json is damaged .*slem meta-dataset --out"
    ):
        MetaStore.load(md)
    config = cash_config(tmp_path, "warm", sampler="tpe")
    result = runner.invoke(
        app,
        [
            "hpo",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            f"study.meta_dataset={md}",
            "--set",
            "study.warm_start=1",
        ],
    )
    assert "is damaged" in one_line_error(result)
    assert not (tmp_path / "run").exists()  # nothing written before the spec was valid


# ---------------------------------------------------------------------- lock, writes, output


def test_second_hpo_on_the_same_run_dir_is_refused(runner: Any, tmp_path: Path) -> None:
    from slem.rundir import lock_run_dir

    config = cash_config(tmp_path, "locked")
    out = tmp_path / "run"
    with lock_run_dir(out, "slem hpo"):  # as a running `slem hpo --out run` holds it
        line = one_line_error(
            runner.invoke(app, ["hpo", str(config), "--out", str(out), "--quiet"])
        )
    assert "is being written by another slem hpo process" in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_nothing_is_written_before_the_spec_is_valid(runner: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "study: {name: bad}\nobjective: {kind: train, base: {method: erm, data: {name: mnist1d}},"
        " space: {optim.nope: {type: float, low: 0.1, high: 1.0}}}\n"
    )
    out = tmp_path / "run"
    one_line_error(runner.invoke(app, ["hpo", str(bad), "--out", str(out)]))
    grid = cash_config(tmp_path, "big-grid", sampler="grid")
    huge = ["--set", "study.grid_points=1000", "--set", "objective.families=[svm,hist_gb]"]
    one_line_error(runner.invoke(app, ["hpo", str(grid), "--out", str(out), *huge]))
    assert not out.exists()


def test_piped_and_quiet_output(runner: Any, tmp_path: Path) -> None:
    config = cash_config(tmp_path, "piped")
    result = runner.invoke(app, ["hpo", str(config), "--out", str(tmp_path / "a"), "--trials", "3"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # the final table, then every summary on a line of its own
    assert lines[-4] == "study piped: 3/3 finished trials (3 complete, 0 pruned)"
    assert lines[-3].startswith("best trial ") and lines[-2].startswith("best config: ")
    assert lines[-1].startswith("run directory: ")
    assert any(line.startswith("┃ rank") for line in lines[:-4])
    quiet = slem(
        "hpo",
        str(config),
        "--out",
        str(tmp_path / "b"),
        "--trials",
        "3",
        "--quiet",
        "--workers",
        "2",
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "A new study created" not in quiet.stdout + quiet.stderr and "[I " not in quiet.stderr
    assert quiet.stderr == ""
    lines = quiet.stdout.splitlines()
    assert len(lines) == 4, quiet.stdout
    assert lines[0].startswith("study piped: 3/3 finished trials (")
    assert lines[1].startswith("best trial ") and lines[2].startswith("best config: ")
    assert lines[3].startswith("run directory: ")


def test_meta_dataset_never_writes_into_the_package(
    runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slem.automl.build import SHIPPED

    before = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["meta-dataset", "--trials", "2", "--tables", "2"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "meta_dataset.json").is_file()
    assert "-> meta_dataset.json" in result.stdout
    line = one_line_error(
        runner.invoke(app, ["meta-dataset", "--tables", "1", "--out", str(SHIPPED)])
    )
    assert "inside the installed slem package" in line
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == before
    help_text = runner.invoke(app, ["meta-dataset", "--help"]).stdout
    assert "current" in help_text and "never" in help_text


def test_threads_reach_the_spawned_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``slem hpo --threads N`` sets this process's threads and passes --threads N on."""
    import subprocess as sp

    from slem.automl import run as hpo_run

    seen: list[list[str]] = []

    class Fake:
        def __init__(self, cmd: list[str], **_: object) -> None:
            seen.append(cmd)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(sp, "Popen", Fake)
    codes = hpo_run.spawn_workers(tmp_path / "hpo.yaml", tmp_path, "sqlite://", 2, 5, threads=1)
    assert codes == [0, 0]
    assert all(cmd[cmd.index("--threads") + 1] == "1" for cmd in seen)


ASKER = """
import json, sys, warnings
import optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore")
from slem.automl.study import ask_lock
study = optuna.load_study(study_name="race", storage=sys.argv[1])
numbers = []
for _ in range(10):
    with ask_lock(study):
        numbers.append(study.ask().number)
print(json.dumps(numbers))
"""


def test_enqueued_trials_are_popped_once_on_sqlite(tmp_path: Path) -> None:
    """Optuna pops an enqueued trial with SELECT ... FOR UPDATE, which SQLite ignores: four
    processes asking at once got the same enqueued trial twice (33-39 distinct of 40 in a
    measurement without the lock). With ``ask_lock`` every ask gets its own trial."""
    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(study_name="race", storage=url)
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASKER, url], stdout=subprocess.PIPE, text=True, env=ENV
        )
        for _ in range(4)
    ]
    numbers = [n for p in procs for n in json.loads(p.communicate(timeout=120)[0])]
    assert sorted(numbers) == list(range(40))
