"""Fixtures of the fault tests: a running plant, and a broker that drops messages early."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LineSimulatorProcess, Mosquitto, free_port, start_line_simulator
from tests.faults.harness import Plant, publish_sample

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


def running_plant(request: pytest.FixtureRequest, plant: Plant) -> Iterator[Plant]:
    """Start the plant; tear it down afterwards, with thread dumps and logs if the test
    failed."""
    try:
        plant.start()
    except BaseException:
        plant.close(diagnose=True)
        raise
    yield plant
    plant.close(diagnose=request.node.stash.get(FAILED, False))


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Central's folder with its keys and the sample model published, made once: each plant
    starts from a copy (the same files `keys init` and `model publish` would write)."""
    return publish_sample(tmp_path_factory.mktemp("published") / "central.yaml")


@pytest.fixture
def line_simulator() -> Iterator[LineSimulatorProcess]:
    """The line simulator, launched without waiting for it: the plant starts central while it
    starts, and waits for it before starting the agent."""
    simulator = start_line_simulator(free_port(), wait=False)
    yield simulator
    simulator.kill()


@pytest.fixture
def protocol() -> str:
    """MQTT version of central and agent; tests parametrize it where sessions matter."""
    return "5"


@pytest.fixture
def plant(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
          line_simulator: LineSimulatorProcess, protocol: str, published: Path) -> Iterator[Plant]:
    yield from running_plant(request, Plant(tmp_path, mosquitto, line_simulator, protocol,
                                       published=published))


@pytest.fixture
def small_queue_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps at most 1 message in flight and 5 queued per client, and drops the
    rest while that client does not keep up."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Mosquitto(port=free_port(), workdir=workdir,
                       extra_config="max_inflight_messages 1\nmax_queued_messages 5\n")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def small_queue_plant(request: pytest.FixtureRequest, tmp_path: Path,
                      small_queue_broker: Mosquitto, line_simulator: LineSimulatorProcess,
                      published: Path) -> Iterator[Plant]:
    yield from running_plant(request, Plant(tmp_path, small_queue_broker, line_simulator,
                                       published=published))
