"""Where a study is stored: :func:`open_storage` (an RDB with heartbeats, or a journal file),
the default SQLite file in the run directory, one-line errors for a storage that cannot be
used, and :func:`ask_lock`, which serializes ``study.ask()`` between the processes of an SQLite
study.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock

from slem.automl.config import StudyConfig
from slem.errors import SlemError

STUDY_DB = "study.db"
PSYCOPG = ("postgresql+psycopg://", "postgresql+psycopg2://")


def open_storage(url: str, cfg: StudyConfig) -> optuna.storages.BaseStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) with heartbeats, or a journal file
    (``journal:PATH``); an unreachable database is a one-line error."""
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    try:
        target = _with_driver(url)
        if target.startswith(PSYCOPG) and "connect_timeout=" not in target:
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # seconds, not minutes
        return optuna.storages.RDBStorage(
            target,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=cfg.heartbeat,
            grace_period=cfg.grace_period or 3 * cfg.heartbeat,
        )
    except SlemError:
        raise
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use it"
        raise SlemError(storage_problem(url, exc)) from None


def storage_problem(url: str, exc: BaseException) -> str:
    """One line on a storage that cannot be used: for an SQLite file, that it is damaged
    and what to do."""
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return (
            f"the study database {path} cannot be used ({first}): it is damaged or not an "
            "SQLite file; restore it from a copy, or start the study again with another --out"
        )
    return f"cannot open the study storage '{redact_url(url)}': {first}"


def _with_driver(url: str) -> str:
    """A PostgreSQL URL names the driver that is installed: SQLAlchemy 2.1 reads
    ``postgresql://`` as psycopg (3), 2.0 as psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for driver in ("psycopg", "psycopg2"):
        try:
            importlib.import_module(driver)
        except ImportError:
            continue
        return f"postgresql+{driver}://{rest}"
    raise SlemError("a PostgreSQL storage needs the driver: pip install 'slem[postgres]'")


def redact_url(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def sqlite_file(study: optuna.Study) -> Path | None:
    """The database file of a study stored in SQLite (None for any other storage)."""
    storage = study._storage
    url = getattr(getattr(storage, "_backend", storage), "url", None)
    if isinstance(url, str) and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///") :].split("?", 1)[0])
    return None


@contextlib.contextmanager
def ask_lock(study: optuna.Study) -> Iterator[None]:
    """Serialize ``study.ask()`` between the processes of an SQLite study. Optuna pops an
    enqueued (WAITING) trial with ``SELECT ... FOR UPDATE``, which SQLite ignores: two workers
    asking at the same moment could both receive the same enqueued trial and run it twice.
    SQLite studies are local to one machine, so a file lock next to the database makes the
    pop atomic; server databases (PostgreSQL) lock the row themselves."""
    path = sqlite_file(study)
    if path is None:
        yield
        return
    with FileLock(f"{path}.ask.lock"):
        yield


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_DB).resolve()}"
