"""Real servers on loopback for the deployment test: a throwaway PostgreSQL cluster from
Debian's binaries and long-running processes (code server, daemon, MLflow) that stop with
the test, whatever happens."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_BINARIES = "/usr/lib/postgresql/*/bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    ready: Callable[[], object],
    timeout: float,
    what: str,
    logs: Sequence[Path] = (),
    context: Callable[[], str] | None = None,
) -> object:
    """Poll ``ready`` until it returns something truthy; on time-out fail with the logs' tails
    (files, or what ``context`` returns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(1.0)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.is_file())
    if context is not None:
        tails += f"\n{context()}"
    pytest.fail(f"{what} did not happen within {timeout:.0f} s\n{tails}")


def postgres_binaries() -> Path | None:
    found = sorted(glob.glob(POSTGRES_BINARIES), key=lambda p: int(Path(p).parent.name))
    return Path(found[-1]) if found else None


class Postgres:
    """A cluster of its own on a free loopback port, trusted for one user, in a temporary
    folder that the server's own (non-root) user owns."""

    def __init__(self, binaries: Path, user: str = "stl") -> None:
        self.binaries, self.user, self.port = binaries, user, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stl-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        # PostgreSQL refuses to run as root; CI runs as root, a developer usually not.
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_owner, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self._run(
            str(self.binaries / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def create_database(self, name: str) -> None:
        self._run(
            str(self.binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name
        )

    def url(self, database: str) -> str:
        # psycopg2 named: SQLAlchemy 2.1 takes plain postgresql:// to mean psycopg 3.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    binaries = postgres_binaries()
    if binaries is None:
        if os.environ.get("STL_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("Debian's postgresql is not installed: run `make postgres`")
        pytest.skip("PostgreSQL is not installed (`make postgres` installs Debian's)")
    server = Postgres(binaries)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Processes:
    """Long-running commands, each in its own process group with its output in a log file;
    ``stop_all`` ends every group, gently first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path) -> Path:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((process, log))
        return log

    def check_alive(self) -> None:
        for process, log in self.started:
            if process.poll() is not None:
                pytest.fail(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")

    def stop_all(self) -> None:
        for process, _ in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
