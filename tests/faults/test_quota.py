"""An outage longer than the disk quota allows: what is missing is exactly what was evicted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LineSimulatorProcess, Mosquitto
from tests.faults.conftest import running_plant
from tests.faults.harness import AGENT, CENTRAL, Plant
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

QUOTA_BYTES = 64 * 1024  # about 160 predictions: a few seconds of this line
PREDICT_EVERY_S = 0.02  # 50 a second: the quota fills, and evictions pile up, sooner


@pytest.fixture
def small_disk_plant(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
                     line_simulator: LineSimulatorProcess, published: Path) -> Iterator[Plant]:
    yield from running_plant(request, Plant(tmp_path, mosquitto, line_simulator,
                                       quota_bytes=QUOTA_BYTES, published=published,
                                       predict_every_s=PREDICT_EVERY_S))


def test_missing_records_are_exactly_those_counted_as_evicted(small_disk_plant: Plant) -> None:
    plant = small_disk_plant
    plant.terminate(CENTRAL)
    wait_until(lambda: sum(plant.evicted_by_agent().values()) >= 100, 60,
               what="the agent evicting under its quota")
    plant.start_central()
    plant.stop_producing_and_drain(timeout_s=60)

    produced = plant.produced()
    stored = plant.stored_seqs()
    gaps = plant.gaps_in_central()
    evicted = plant.evicted_by_agent()
    missing = set(range(1, produced + 1)) - set(stored)
    print(f"produced {produced}, stored {len(stored)}, evicted {evicted}, gaps {len(gaps)}")
    assert len(stored) == len(set(stored)), "nothing doubled"
    assert missing == gaps, "every missing seq is a reported eviction, and only those"
    assert len(gaps) == sum(evicted.values()), "central's gaps match the agent's counters"
    assert set(evicted) == {"prediction"}, "only the lowest priority kind went"
    assert not gaps & set(stored)
    plant.terminate(AGENT)
    plant.terminate(CENTRAL)
