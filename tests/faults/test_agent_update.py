"""Agent software update on real processes: central, Mosquitto, the line simulator and
`edge-agent launch --supervise` of this install. A release built from this checkout (0.1.1) is
published, deployed and confirmed; then a release that crashes at start (0.1.2) is deployed, the
launcher brings 0.1.1 back and central sees the update rolled back with the crash's last lines.
Every record the agents buffered reaches central exactly once across both switches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_wheels import BROKEN_VERSION, GOOD_VERSION, AgentWheels
from tests.conftest import LineSimulatorProcess, Mosquitto
from tests.faults.conftest import running_plant
from tests.faults.harness import AGENT, DEVICE, Plant
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


class LaunchedPlant(Plant):
    """The plant with the agent started as systemd starts it: through the launcher."""

    def start_agent(self) -> None:
        if AGENT in self.processes:
            self.restarts[AGENT] += 1
        self._start(AGENT, "launch", "--supervise", "-c", str(self.agent_config))

    def agent_version(self) -> str | None:
        rows = self._central_query("SELECT agent_version, state FROM devices WHERE "
                                   "device_id = ?", (DEVICE,))
        return f"{rows[0][0]} {rows[0][1]}" if rows else None

    def deployment(self, version: str) -> tuple[str, str]:
        rows = self._central_query(
            "SELECT state, detail FROM deployments WHERE kind = 'agent' AND version = ? "
            "ORDER BY issued_at DESC LIMIT 1", (version,))
        return rows[0] if rows else ("", "")


@pytest.fixture
def launched_plant(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
                   line_simulator: LineSimulatorProcess, published: Path) -> Iterator[Plant]:
    yield from running_plant(request, LaunchedPlant(tmp_path, mosquitto, line_simulator,
                                               published=published))


def test_an_agent_release_is_confirmed_and_a_crashing_one_is_rolled_back_without_losing_data(
        launched_plant: LaunchedPlant, agent_wheels: AgentWheels) -> None:
    plant = launched_plant
    for wheel in (agent_wheels.good, agent_wheels.broken):
        published = plant.central_cli("agent", "publish", str(wheel))
        assert published.returncode == 0, published.stdout + published.stderr

    update = plant.central_cli("agent", "deploy", GOOD_VERSION, "--device", DEVICE,
                               "--wait", "120", "--healthy-within", "60")
    assert update.returncode == 0, update.stdout + update.stderr + plant.log(AGENT)
    assert "confirmed" in update.stdout
    wait_until(lambda: plant.agent_version() == f"{GOOD_VERSION} online", 30,
               what=f"central sees the agent online as {GOOD_VERSION}")
    plant.wait_produced(20)  # the new release predicts and buffers

    broken = plant.central_cli("agent", "deploy", BROKEN_VERSION, "--device", DEVICE,
                               "--wait", "120", "--healthy-within", "60")
    assert broken.returncode == 1, broken.stdout + broken.stderr + plant.log(AGENT)
    state, detail = plant.deployment(BROKEN_VERSION)
    assert state == "rolled_back", (state, detail)
    assert "exited with status 1" in detail and "broken on purpose" in detail, detail
    wait_until(lambda: plant.agent_version() == f"{GOOD_VERSION} online", 30,
               what=f"central sees {GOOD_VERSION} back online")
    assert plant.running(AGENT), "the launcher keeps running through both switches"
    plant.wait_produced(20)

    delivery = plant.finish()
    print(delivery)
