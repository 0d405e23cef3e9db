"""A throwaway PostgreSQL server for the distributed-HPO tests.

``start_postgres`` runs ``initdb`` and ``pg_ctl start`` on a free loopback port with trust
authentication and ``fsync=off``, and creates the database ``slem``. PostgreSQL refuses to run
as root, so when we are root the server runs as the ``postgres`` OS user (``runuser``), in a
fresh directory under the system temp dir that it owns.

Tests use the ``postgres_url`` fixture (import it into the test module)::

    from tests.postgres_server import postgres_url  # noqa: F401

It skips the tests when the server binaries or psycopg2 are missing (``scripts/install.sh``
installs the Debian package ``postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "slem"
SUPERUSER = "postgres"
OS_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(s) if s.isdigit() else 0 for s in Path(p).parts[-3].split(".")],
    )
    for initdb in reversed(versions):
        if (Path(initdb).parent / "pg_ctl").exists():
            return Path(initdb).parent
    return None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install 'slem[postgres]')"
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to run PostgreSQL as another user) is missing"
        try:
            import pwd

            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root, and there is no '{OS_USER}' OS user to run PostgreSQL"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running server; ``url`` names its database ``slem``; ``stop()`` removes everything."""

    def __init__(self, root: Path, bin_dir: Path, as_user: str | None) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.bin_dir = bin_dir
        self.as_user = as_user
        self.port = 0
        self._stopped = False

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root
        )

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def init(self) -> None:
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self, attempts: int = 3) -> None:
        """Start on a free port (another free one when something took it meanwhile)."""
        error = ""
        for _ in range(attempts):
            self.port = _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=50"
            )
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                timeout=90,
            )
            if done.returncode == 0:
                self._create_database()
                return
            error = f"{done.stdout}\n{done.stderr}\n{self._log_tail()}"
            self._kill()
        raise RuntimeError(f"PostgreSQL did not start:\n{error}")

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", connect_timeout=10
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            conn.close()

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill(self) -> None:
        """Stop the server at once: pg_ctl, else SIGKILL to the postmaster."""
        if self.data.exists():
            with contextlib.suppress(Exception):
                self._run(
                    "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "20", "stop"
                )
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(tmp_root: Path | None = None) -> PostgresServer:
    """Start a throwaway server in a fresh directory under ``tmp_root`` (as root: under the
    system temp dir, which the ``postgres`` user can reach; pytest's are private to root)."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    as_user = OS_USER if os.geteuid() == 0 else None
    parent = None if as_user else tmp_root
    root = Path(tempfile.mkdtemp(prefix="slem-pg-", dir=parent))
    server = PostgresServer(root, bin_dir, as_user)
    try:
        if as_user:
            import pwd

            entry = pwd.getpwnam(as_user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server.init()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a throwaway PostgreSQL database for this test module; skips the module's
    tests where no server can be started."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.url
    finally:
        server.stop()
