"""A throwaway PostgreSQL for the tests: Debian's own server binaries, a cluster in a temp dir, 127.0.0.1 only.

`postgres_server` (session) runs `initdb` + `pg_ctl start` on a free port — as the `postgres` user when the
tests run as root (PostgreSQL refuses root, and CI runs as root) — and stops it at the end. `postgres_url`
(per test) is a fresh database in it. `PARLEY_TEST_POSTGRES_URL` points the tests at a server of your own
instead (a role that may CREATE DATABASE). Without PostgreSQL installed the tests are skipped with the reason,
except under `PARLEY_REQUIRE_POSTGRES=1` (set by `make test`), where that is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

USER = "parley"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(reason: str) -> None:
    if os.environ.get("PARLEY_REQUIRE_POSTGRES"):
        pytest.fail(f"PostgreSQL is required here (PARLEY_REQUIRE_POSTGRES): {reason}")
    pytest.skip(f"PostgreSQL not available: {reason} (apt-get install postgresql, or set PARLEY_TEST_POSTGRES_URL)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server (its `postgres` database) for this test session."""
    given = os.environ.get("PARLEY_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _missing("no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    if os.geteuid() == 0:  # PostgreSQL will not run as root: Debian's package made the `postgres` user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no `postgres` user to run the server as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync",
                        "--no-instructions"], check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60",
                        "start"], check=True, capture_output=True, timeout=90)
    except subprocess.CalledProcessError as e:
        log = (base / "log").read_text(errors="replace") if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr.decode(errors='replace')}{log}")
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, _ = postgres_server.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        admin = await asyncpg.connect(postgres_server)
        try:
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            except Exception as e:  # the tests' result stands; the leftover database is said, not hidden
                warnings.warn(f"test database {name} was not dropped: {e}", stacklevel=1)
        finally:
            await admin.close()
