"""Shared fixtures: real Mosquitto brokers on free ports, temp folders, the sample files."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_wheels import AgentWheels, build_agent_wheels
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    wait_until(lambda: _accepts(port), timeout_s, what=f"something listening on 127.0.0.1:{port}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Mosquitto:
    """A private Mosquitto process; `stop()`/`start()` simulate a broker restart."""

    port: int
    workdir: Path
    extra_config: str = ""
    process: subprocess.Popen | None = None

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            "log_type all\n"
            # As root, Mosquitto would switch to a 'mosquitto' user that cannot write here.
            f"{'user root' if os.geteuid() == 0 else ''}\n"
            f"{self.extra_config}\n"
        )
        self.process = subprocess.Popen(
            [_mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("mosquitto is not installed: run `sudo apt-get install -y mosquitto`")
    raise AssertionError  # unreachable; pytest.fail raises


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Mosquitto(port=free_port(), workdir=workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def python() -> str:
    return sys.executable


@dataclass
class LineSimulatorProcess:
    port: int
    process: subprocess.Popen
    ready: bool = False

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/line-1"

    def wait_ready(self) -> None:
        """Return once the simulator has printed READY: it accepts connections."""
        assert self.process.stdout is not None
        while not self.ready:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(
                    f"line simulator exited with {self.process.wait()} before READY")
            self.ready = line.startswith("READY")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)

    def kill(self) -> None:
        """Stop at once, for a teardown: a graceful stop takes asyncua over a second."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def start_line_simulator(
    port: int, interval_s: float = 0.5, extra_args: Sequence[str] = (), wait: bool = True
) -> LineSimulatorProcess:
    """The sample OPC-UA server as a real process; returns once it prints READY, or at once
    with `wait=False` (then call `wait_ready()` before connecting).

    `extra_args` go to the simulator's command line, e.g. ["--users", "operator:secret"].
    """
    process = subprocess.Popen(
        [
            sys.executable,
            str(SAMPLE_DATA / "line_simulator.py"),
            "--port",
            str(port),
            "--interval-s",
            str(interval_s),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    simulator = LineSimulatorProcess(port, process)
    if wait:
        simulator.wait_ready()
    return simulator


@pytest.fixture
def line_simulator() -> Iterator[LineSimulatorProcess]:
    simulator = start_line_simulator(free_port())
    yield simulator
    simulator.kill()


# PostgreSQL for central's tests: each test gets a database of its own on this server
# (EDGE_MLOPS_TEST_POSTGRES, else 127.0.0.1:5432 or the local socket, database "test", as
# deploy/setup.sh --test leaves it); unreachable, the PostgreSQL cases are skipped, unless
# EDGE_MLOPS_REQUIRE_POSTGRES=1 (set by the test command) fails them.
POSTGRES_SERVERS = [os.environ["EDGE_MLOPS_TEST_POSTGRES"]] \
    if os.environ.get("EDGE_MLOPS_TEST_POSTGRES") \
    else ["postgresql://127.0.0.1:5432/test", "postgresql:///test"]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    try:
        import psycopg
    except ImportError:
        _no_postgres("psycopg is not installed (pip install -e '.[dev]')")
    name = f"edge_mlops_test_{uuid.uuid4().hex[:12]}"
    admin, errors = None, []
    for server in POSTGRES_SERVERS:
        try:
            admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError as exc:
            errors.append(f"{server}: {str(exc).strip()}")
    if admin is None:
        _no_postgres("PostgreSQL is not reachable (" + "; ".join(errors) + ")")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.split("?")[0].rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _no_postgres(reason: str) -> None:
    if os.environ.get("EDGE_MLOPS_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Central's database for one test, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'central.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def agent_wheels(tmp_path_factory: pytest.TempPathFactory) -> AgentWheels:
    """Two releases of this checkout built as real wheels once per session (about 2 s): a good
    0.1.1 and a 0.1.2 whose agent crashes at start."""
    wheels = build_agent_wheels(tmp_path_factory.mktemp("agent-wheels"))
    print(f"agent wheels built in {wheels.build_s:.1f} s")
    return wheels
