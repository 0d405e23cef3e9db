"""A study on disk: ``hpo.yaml`` (the resolved config with provenance and the study's storage),
the study's storage (``study.db``, SQLite, unless a shared storage URL is given),
``trials.csv``, ``best.json`` (the best configuration, its validation score, and its test
score, which played no part in choosing it) and the plots in ``plots/``.

Every file read back here (``hpo.yaml``, the study database) that is damaged or missing is a
one-line :class:`~slem.errors.SlemError` naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from slem.automl.config import HPOConfig, parse_hpo_config
from slem.automl.objectives import CashTrial, TrainTrial, make_objective
from slem.automl.study import (
    SOURCE,
    STUDY_DB,
    Tally,
    best_rows,
    create_study,
    make_sampler,
    open_storage,
    planned,
    redact_url,
    storage_problem,
    tally,
    work,
)
from slem.errors import SlemError
from slem.rundir import atomic_write_text

CONFIG_FILE = "hpo.yaml"
RUN_KEYS = ("provenance", "storage")  # hpo.yaml keys that are not part of the config
Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def budgets_of(objective: Any) -> list[int]:
    if isinstance(objective, CashTrial):
        return objective.budgets
    return list(range(1, objective.epochs + 1))


def read_yaml_mapping(path: Path, damaged: str) -> dict[str, Any]:
    """A YAML file's mapping; an unreadable, non-YAML or non-mapping file is a SlemError
    naming it and ending with ``damaged`` (what to do)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SlemError(f"{path} cannot be read ({first}); {damaged}") from None
    if not isinstance(values, dict):
        raise SlemError(f"{path} holds no config mapping (damaged or empty?); {damaged}")
    return values


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """The raw ``hpo.yaml`` of a run directory (config plus the run keys)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise SlemError(f"'{run_dir}' holds no study ({CONFIG_FILE} missing); nothing to resume")
    return read_yaml_mapping(path, "restore it, or start the study again with another --out")


def read_hpo_config(run_dir: Path) -> HPOConfig:
    """The config of the study in ``run_dir``.

    Raises:
        SlemError: ``hpo.yaml`` is missing, unreadable or not a valid study config.
    """
    values = read_run_file(run_dir)
    for key in RUN_KEYS:
        values.pop(key, None)
    try:
        return parse_hpo_config(values)
    except SlemError as exc:
        raise SlemError(
            f"{run_dir / CONFIG_FILE} is damaged ({exc}); restore it, or start the study "
            "again with another --out"
        ) from None


def stored_storage(run_dir: Path) -> str | None:
    """The (password-redacted) storage URL the study in ``run_dir`` was started with; None
    for the default SQLite file in the run directory."""
    value = read_run_file(run_dir).get("storage")
    return value if isinstance(value, str) else None


def _comparable(cfg: HPOConfig) -> dict[str, Any]:
    """The config as :func:`~slem.automl.load.load_study_config` makes it now (base read in,
    paths absolute), also for a study started before it did, without the keys a resume may
    change."""
    from slem.automl.load import read_base
    from slem.train.config_io import resolve_paths

    doc = cfg.model_dump(mode="json")
    objective = doc["objective"]
    if objective["kind"] == "train":
        base = objective["base"]
        with contextlib.suppress(SlemError):  # a base file gone: compared as it is (differs)
            objective["base"] = read_base(
                base, Path(base).parent if isinstance(base, str) else Path.cwd()
            )
    else:
        objective["data"] = resolve_paths({"data": objective["data"]})["data"]
    for key in ("trials", "timeout"):  # a resumed study may be longer, or get more time
        doc["study"].pop(key, None)
    return doc


def check_resume(config: HPOConfig, run_dir: Path, storage: str | None) -> None:
    """Resuming ``run_dir`` with ``config`` and ``storage`` continues the same study: the
    same search (only ``study.trials`` and ``study.timeout`` may change) in the same storage.

    Raises:
        SlemError: what differs, and how to resume instead.
    """
    stored = read_hpo_config(run_dir)
    old, new = _comparable(stored), _comparable(config)
    if old != new:
        diff = sorted(_diff(old, new))
        raise SlemError(
            f"the config differs from the study in {run_dir} at {', '.join(diff[:5])}; resume "
            f"with 'slem hpo --resume --out {run_dir}' (its own {CONFIG_FILE}), or start a new "
            "study with another --out"
        )
    recorded = stored_storage(run_dir)
    given = None if storage is None else redact_url(storage)
    if recorded != given:
        where = recorded or f"{run_dir / STUDY_DB}"
        raise SlemError(
            f"the study in {run_dir} lives in {where}; resume with "
            + (f"--storage {recorded}" if recorded else "no --storage")
            + (" (and its password)" if recorded and "***" in recorded else "")
        )


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path]


def check_fresh(run_dir: Path, storage: str | None) -> None:
    """A new study may be written to ``run_dir``.

    Raises:
        SlemError: the directory already holds a study (or a study database).
    """
    if (run_dir / CONFIG_FILE).exists():
        raise SlemError(
            f"'{run_dir}' already holds a study; continue it with --resume or choose another --out"
        )
    if storage is None and (run_dir / STUDY_DB).exists():
        raise SlemError(
            f"'{run_dir}' holds a study database but no {CONFIG_FILE}; move {STUDY_DB} away "
            "or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise SlemError(f"--out {run_dir} is a file, not a directory; choose another --out")


def write_run_file(config: HPOConfig, run_dir: Path, storage: str | None, total: int) -> None:
    """``hpo.yaml``: the config (with the study's total), provenance and the storage."""
    from slem.provenance import provenance

    doc: dict[str, Any] = config.model_dump(mode="json")
    doc["study"]["trials"] = total
    doc["storage"] = None if storage is None else redact_url(storage)
    doc["provenance"] = provenance()
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(doc, sort_keys=False))


def check_study_database(run_dir: Path, storage: str | None, resume: bool) -> None:
    """On resume, the default SQLite database must be there and not empty."""
    if storage is not None or not resume:
        return
    db = run_dir / STUDY_DB
    if not db.is_file() or db.stat().st_size == 0:
        state = "missing" if not db.is_file() else "empty"
        raise SlemError(
            f"the study database {db} is {state}; restore it from a copy, or start the study "
            "again with another --out"
        )


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Database errors while a study runs (a damaged SQLite file, a dropped connection) as
    one-line SlemErrors naming the storage."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise SlemError(storage_problem(url, exc).replace("cannot open", "cannot use")) from None


def build_objective(config: HPOConfig) -> CashTrial | TrainTrial:
    """The objective, checked: its space, its data and (for the grid) the grid size."""
    study_cfg = config.study
    objective = make_objective(config.objective, study_cfg.reduction_factor, study_cfg.seed)
    make_sampler(study_cfg, objective.space)  # a grid that is too large fails here
    return objective


def joined(
    config: HPOConfig, url: str, objective: Any, attempts: int = 5, create: bool = True
) -> optuna.Study:
    """Create or join the study (``create=False``: join only). Workers that start together
    on a fresh database race to create its tables and the study; the losers retry and join.

    Raises:
        SlemError: the storage cannot be opened, or (``create=False``) holds no such study.
    """
    for attempt in range(attempts):
        try:
            storage = open_storage(url, config.study)
            if not create:
                try:
                    storage.get_study_id_from_name(config.study.name)
                except KeyError:
                    raise SlemError(
                        f"the study storage {redact_url(url)} holds no study "
                        f"'{config.study.name}' (replaced or damaged?); start the study again "
                        "with another --out"
                    ) from None
            return create_study(config, storage, objective.space, budgets_of(objective))
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == attempts - 1:
                raise SlemError(f"could not join study '{config.study.name}'") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Start:
    """A configuration enqueued before the sampler's first proposal, and where it came from
    (the trial's ``source`` user attr): ``zero_shot:<meta-dataset>#<rank>`` or
    ``warm_start:<task>``."""

    params: dict[str, Any]
    source: str


def enqueue_starts(study: optuna.Study, starts: Sequence[Start]) -> None:
    """Meta-learned first trials (:func:`meta_learned_starts`) for a study with no trials,
    each tagged with its ``source``."""
    if not study.trials:
        for start in starts:
            study.enqueue_trial(
                start.params, user_attrs={SOURCE: start.source}, skip_if_exists=True
            )


def run_worker(
    config: HPOConfig,
    url: str,
    callbacks: Sequence[Callback] = (),
    trials: int | None = None,
    objective: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> optuna.Study:
    """One worker on the study (which must exist): runs trials until the study holds its
    total of finished trials (over all workers)."""
    study_cfg = config.study
    objective = objective or build_objective(config)
    study = joined(config, url, objective, create=False)
    work(
        study,
        objective,
        trials or study_cfg.trials,
        study_cfg.timeout,
        callbacks,
        should_stop=should_stop,
    )
    return study


def meta_learned_starts(config: HPOConfig, objective: Any) -> list[Start]:
    """CASH: zero-shot proposals, then the best configurations of the nearest earlier tasks,
    each with its source (reads the meta-dataset: a damaged one is a SlemError). A
    configuration proposed twice keeps its first source; one outside the study's space (a
    model family it leaves out) is dropped."""
    study_cfg = config.study
    if not isinstance(objective, CashTrial) or not (study_cfg.warm_start or study_cfg.zero_shot):
        return []
    from slem.automl.build import SHIPPED
    from slem.automl.meta import MetaStore, ZeroShot, warm_start_sources
    from slem.data.meta_features import meta_features

    path = Path(study_cfg.meta_dataset or SHIPPED)
    store = MetaStore.load(path)
    mf = meta_features(objective.task)
    exclude = [objective.task.name]  # never start from the task's own earlier study
    starts: list[tuple[dict[str, Any], str]] = []
    if study_cfg.zero_shot:
        model = ZeroShot(study_cfg.seed).fit(store, exclude)
        ranked = model.rank(mf)[: study_cfg.zero_shot]
        starts += [(c, f"zero_shot:{path.name}#{i}") for i, c in enumerate(ranked, 1)]
    if study_cfg.warm_start:
        near = warm_start_sources(store, mf, study_cfg.warm_start, exclude=exclude)
        starts += [(c, f"warm_start:{task}") for c, task in near]
    out: list[Start] = []
    for c, source in starts:
        c = objective.space.active_config(c)
        if objective.space.holds(c) and all(c != s.params for s in out):
            out.append(Start(c, source))  # not one of a family the study leaves out
    return out


def watch_parent() -> None:
    """In a spawned worker: exit at once when the parent ``slem hpo`` dies (even by
    SIGKILL), like the rest of the command; the running trial is then failed by heartbeat
    and replaced when the study is resumed."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(143)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def spawn_workers(
    config_path: Path,
    run_dir: Path,
    url: str,
    n: int,
    trials: int | None,
    threads: int | None = None,
) -> list[int]:
    """``n`` worker processes of ``slem hpo --worker`` on the same study, each with
    ``threads`` torch threads (default: slem's default); their output goes to
    ``worker-<i>.log`` in the run directory. Returns their exit codes once all finished."""
    cmd = [
        sys.executable,
        "-m",
        "slem.cli.app",
        "hpo",
        str(config_path),
        "--worker",
        "--storage",
        url,
        "--out",
        str(run_dir),
        "--quiet",
    ]
    if trials is not None:
        cmd += ["--trials", str(trials)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    procs = []
    try:
        for i in range(n):
            with open(run_dir / f"worker-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        return [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise


def worker_error(run_dir: Path, n: int) -> str | None:
    """The first ``error:`` line any worker's log holds."""
    for i in range(n):
        try:
            lines = (run_dir / f"worker-{i}.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("error:"):
                return line.removeprefix("error:").strip()
    return None


def write_results(
    study: optuna.Study,
    run_dir: Path,
    target: int | None = None,
    plots: Callable[[optuna.Study, Path], Sequence[Path]] | None = None,
    objective: CashTrial | TrainTrial | None = None,
) -> dict[str, Any]:
    """``trials.csv``, ``best.json``, with ``objective`` ``best.yaml``
    (:func:`slem.automl.outputs.write_best_config`), and the plots (by ``plots``, e.g.
    :func:`slem.report.write_study_plots`, into ``run_dir/plots``; ``automl`` sits below
    ``report``); returns the summary (``trials``: the finished trials, which count toward the
    study's total; ``best_source``: where the best configuration came from; ``starts``: the
    trials enqueued from earlier tasks, with their sources; ``best_config``: ``best.yaml``;
    ``plots``: the files written)."""
    atomic_write_text(run_dir / "trials.csv", study.trials_dataframe().to_csv(index=False))
    n = tally(study)
    best = best_rows(study, 1)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "planned": target,
        "trials": n.finished,
        "complete": n.complete,
        "pruned": n.pruned,
        "failed": n.failed,
        "lost": n.lost,
        "skipped": n.skipped,
        "running": n.running,
    }
    if best:
        t = best[0]
        summary.update(
            best_trial=t.number,
            best_value=t.value,
            best_params=t.params,
            best_test={k: v for k, v in t.user_attrs.items() if k.startswith("test_")},
            best_source=t.user_attrs.get(SOURCE, "sampler"),
        )
        if objective is not None:
            from slem.automl.outputs import write_best_config

            summary["best_config"] = str(write_best_config(study, objective, t, run_dir))
    summary["starts"] = [
        {
            "trial": t.number,
            "source": t.user_attrs[SOURCE],
            "state": t.state.name.lower(),
            "value": t.value,
        }
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(SOURCE, "sampler") != "sampler"
    ]
    written = plots(study, run_dir / "plots") if plots is not None else []
    summary["plots"] = [str(p) for p in written]
    atomic_write_text(run_dir / "best.json", json.dumps(summary, indent=2, default=str))
    return summary


def tally_line(study: optuna.Study, target: int) -> str:
    """``study NAME: 12/12 finished trials (12 complete, 0 pruned); ...``"""
    n: Tally = tally(study)
    line = (
        f"study {study.study_name}: {n.finished}/{target} finished trials "
        f"({n.complete} complete, {n.pruned} pruned)"
    )
    extra = []
    if n.failed:
        extra.append(f"{n.failed} failed and replaced")
    if n.lost:
        extra.append(f"{n.lost} lost (their worker died) and replaced")
    if n.skipped:
        extra.append(f"{n.skipped} skipped (duplicate or surplus, never evaluated)")
    if n.running:
        extra.append(f"{n.running} running")
    return line + ("; " + ", ".join(extra) if extra else "")


def load_study(config: HPOConfig, url: str) -> optuna.Study:
    return optuna.load_study(study_name=config.study.name, storage=open_storage(url, config.study))


def target_of(study: optuna.Study, objective: Any, total: int) -> int:
    return planned(study, objective, total)
