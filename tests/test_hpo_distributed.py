"""Distributed HPO on a shared study: worker processes on a throwaway PostgreSQL server run
each planned trial exactly once, a killed worker's trial is failed by heartbeat and replaced,
a raising trial is recorded as failed with its error and replaced."""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import optuna
import pytest

from slem.automl.config import StudyConfig
from slem.automl.study import counted, open_storage, work
from slem.errors import SlemError
from tests.postgres_server import postgres_url  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPAWN = multiprocessing.get_context("spawn")
WAIT = 90.0  # seconds: generous deadline for any one wait on a worker process
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL


def objective(
    trial: optuna.Trial,
    delay: float = 0.3,
    slow_x: int | None = None,
    raise_x: int | None = None,
    started: Event | None = None,
) -> float:
    """Records the worker's pid; ``slow_x`` sleeps a minute (after setting ``started``),
    ``raise_x`` raises."""
    x = trial.suggest_int("x", 0, 11)
    trial.set_user_attr("pid", os.getpid())
    if x == raise_x:
        raise ValueError("boom")
    if x == slow_x:
        if started is not None:
            started.set()
        time.sleep(60)
    time.sleep(delay)
    return float(x)


def worker(
    url: str,
    name: str,
    total: int,
    cfg: dict[str, Any],
    ready: Event | None = None,
    go: Event | None = None,
    **objective_kwargs: Any,
) -> None:
    """One worker process: open the storage, load the study, wait for ``go``, then work."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url, StudyConfig(**cfg)))
    if ready is not None and go is not None:
        ready.set()
        if not go.wait(WAIT):
            raise TimeoutError("no go signal")
    work(study, functools.partial(objective, **objective_kwargs), total=total)


@pytest.fixture()
def spawn() -> Iterator[Any]:
    """Start worker processes; kill whatever is still alive at teardown."""
    procs: list[BaseProcess] = []

    def start(*args: Any, **kwargs: Any) -> BaseProcess:
        proc = SPAWN.Process(target=worker, args=args, kwargs=kwargs, daemon=True)
        proc.start()
        procs.append(proc)
        return proc

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
    yield start
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def join(proc: BaseProcess) -> None:
    proc.join(WAIT)
    assert not proc.is_alive(), "worker did not finish in time"
    assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"


def new_study(url: str, cfg: StudyConfig, planned: int) -> optuna.Study:
    study = optuna.create_study(
        storage=open_storage(url, cfg), study_name=cfg.name, load_if_exists=True
    )
    for i in range(planned):
        study.enqueue_trial({"x": i})
    return study


def test_unreachable_database_is_one_line_error() -> None:
    pytest.importorskip("psycopg2")
    start = time.monotonic()
    with pytest.raises(SlemError) as err:
        open_storage("postgresql://postgres@127.0.0.1:1/nope", StudyConfig())
    message = str(err.value)
    assert "cannot open the study storage" in message
    assert "connect" in message.lower()  # the server refused, not a missing driver
    assert "\n" not in message
    assert time.monotonic() - start < 20


def test_workers_run_each_planned_trial_exactly_once(postgres_url: str, spawn: Any) -> None:  # noqa: F811
    cfg = StudyConfig(name=f"once-{uuid.uuid4().hex[:8]}")
    study = new_study(postgres_url, cfg, planned=12)
    go = SPAWN.Event()
    readies = [SPAWN.Event() for _ in range(3)]
    procs = [
        spawn(postgres_url, cfg.name, 12, cfg.model_dump(), ready, go, delay=0.3)
        for ready in readies
    ]
    deadline = time.monotonic() + WAIT
    for ready in readies:
        assert ready.wait(max(0.0, deadline - time.monotonic())), "a worker did not start"
    go.set()
    for proc in procs:
        join(proc)

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 12
    assert counted(study) == 12
    assert sorted(t.params["x"] for t in trials) == list(range(12))
    assert all(t.state == COMPLETE for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert pids <= {p.pid for p in procs}
    assert len(pids) >= 2


def test_killed_worker_trial_fails_and_study_goes_on(postgres_url: str, spawn: Any) -> None:  # noqa: F811
    cfg = StudyConfig(name=f"killed-{uuid.uuid4().hex[:8]}", heartbeat=1, grace_period=2)
    total = 4
    study = new_study(postgres_url, cfg, planned=total)
    started = SPAWN.Event()
    doomed = spawn(postgres_url, cfg.name, total, cfg.model_dump(), slow_x=0, started=started)
    assert started.wait(WAIT), "the slow trial did not start"
    (running,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    assert running.params["x"] == 0
    assert running.user_attrs["pid"] == doomed.pid
    doomed.kill()
    doomed.join(WAIT)
    assert doomed.exitcode == -9
    # its last heartbeat is at most 1 s old: past the 2 s grace period the next worker's
    # next trial fails it (Optuna calls fail_stale_trials before each trial)
    time.sleep(cfg.heartbeat + (cfg.grace_period or 0) + 0.5)
    survivor = spawn(postgres_url, cfg.name, total, cfg.model_dump(), delay=0.1)
    join(survivor)

    trials = study.get_trials(deepcopy=False)
    assert counted(study) == total  # the killed trial was replaced: `total` finished trials
    assert len(trials) == total + 1
    by_x = {t.params["x"]: t for t in trials[:total]}
    assert sorted(by_x) == list(range(total))
    assert by_x[0].state == FAIL
    assert by_x[0].user_attrs["pid"] == doomed.pid
    for t in trials[1:]:
        assert t.state == COMPLETE
        assert t.user_attrs["pid"] == survivor.pid


def test_raising_trial_is_recorded_and_study_goes_on(tmp_path: Path) -> None:
    cfg = StudyConfig(name="raises")
    url = f"sqlite:///{tmp_path}/s.db"
    study = new_study(url, cfg, planned=4)
    study.sampler = optuna.samplers.RandomSampler(seed=0)  # a reproducible replacement
    work(study, functools.partial(objective, delay=0.0, raise_x=2), total=4)

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5  # the failed trial was replaced
    assert trials[2].params["x"] == 2 and trials[2].state == FAIL
    assert "ValueError: boom" in trials[2].user_attrs["error"]
    assert "ValueError: boom" in trials[2].user_attrs["traceback"]
    assert counted(study) == 4 and trials[4].params["x"] != 2
    assert all(t.state == COMPLETE for i, t in enumerate(trials) if i != 2)


def test_cli_workers_share_one_postgres_study(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    """``slem hpo --storage postgresql://... --workers 3``: three processes, one study."""
    import json
    import subprocess
    import sys

    config = tmp_path / "cash.yaml"
    config.write_text(
        "study: {name: cli-pg, sampler: tpe, trials: 9}\n"
        "objective: {kind: cash, data: {name: breast_cancer}, families: [logreg, knn]}\n"
    )
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slem.cli.app",
            "hpo",
            str(config),
            "--storage",
            postgres_url,
            "--workers",
            "3",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "worker exit codes" not in done.stdout  # every worker exited 0
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == 9 and best["failed"] == 0  # exactly the trials asked for
    assert not (out / "study.db").exists()  # the study lives in PostgreSQL
    study = optuna.load_study(
        study_name="cli-pg", storage=open_storage(postgres_url, StudyConfig())
    )
    finished = study.get_trials(states=(COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == 9 and len({str(t.params) for t in finished}) == 9
