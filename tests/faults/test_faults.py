"""Faults with real processes against "nothing lost, nothing doubled".

Each test runs a whole plant (Mosquitto, the OPC-UA line simulator, central, one agent making
about 20 predictions a second), breaks one part while records flow, then drains the agent and
checks that central holds every seq the agent ever accepted exactly once.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from tests.faults.harness import AGENT, CENTRAL, Plant
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def test_agent_killed_repeatedly_loses_and_doubles_nothing(plant: Plant) -> None:
    rng = random.Random(20240611)
    for round_ in range(1, 6):
        plant.wait_produced(10)
        if round_ % 2:
            # While predicting, a few records in flight: killed at a random moment.
            time.sleep(rng.uniform(0.5, 2.5))
        else:
            # While draining a backlog: central was frozen long enough for the agent to resend;
            # the agent dies as soon as central stores again, with acks on their way.
            plant.pause(CENTRAL)
            stored = plant.stored()
            time.sleep(rng.uniform(2.5, 4.0))
            plant.resume(CENTRAL)
            wait_until(lambda stored=stored: plant.stored() > stored, 10, interval_s=0.01,
                       what="central storing again")
        seq, unacked = plant.produced(), plant.buffered()
        plant.kill(AGENT)
        print(f"kill -9 #{round_}: seq {seq}, {unacked} records unacked")
        plant.start_agent()
    plant.wait_produced(10)
    delivery = plant.finish()
    print(f"after {plant.restarts[AGENT]} agent restarts: {delivery}")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"], ids=["mqtt5", "mqtt311"])
def test_broker_restart_loses_and_doubles_nothing(plant: Plant) -> None:
    plant.wait_produced(20)
    plant.broker.stop()
    down_at = plant.produced()
    # Longer than the clients' longest reconnect delay (2 s), so that they back off fully.
    time.sleep(3.5)
    buffered = plant.buffered()
    assert plant.produced() > down_at + 20, "the agent must keep predicting while offline"
    assert buffered > 20, "records made while the broker is down wait in the buffer"

    stored_before = plant.stored()
    plant.broker.start()
    back, back_wall = time.monotonic(), time.time()
    wait_until(lambda: plant.stored() > stored_before, 15, interval_s=0.05,
               what="first uplink batch stored after the broker came back")
    first_batch_s = time.monotonic() - back
    reconnected = ", ".join(f"{name} after {at - back_wall:.2f} s" for name in (AGENT, CENTRAL)
                            if (at := plant.connected_at(name)))
    print(f"broker back (MQTT {plant.protocol}): first batch stored after {first_batch_s:.2f} s "
          f"({buffered} records had been buffered); reconnected: {reconnected}")
    plant.wait_produced(20)
    delivery = plant.finish()
    print(f"broker restart: {delivery}")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"], ids=["mqtt5", "mqtt311"])
def test_central_outage_loses_and_doubles_nothing(plant: Plant) -> None:
    plant.wait_produced(20)
    plant.terminate(CENTRAL)
    stored_before = plant.stored()
    wait_until(lambda: plant.buffered() > 100, 30, interval_s=0.2,
               what="records made while central is down waiting in the buffer")
    assert plant.stored() == stored_before

    plant.start_central()
    back = time.monotonic()
    wait_until(lambda: plant.stored() > stored_before, 20, interval_s=0.05,
               what="records stored after central came back")
    print(f"central back: first batch stored after {time.monotonic() - back:.2f} s")
    plant.wait_produced(20)
    delivery = plant.finish()
    print(f"central outage: {delivery}")


def test_slow_central_and_broker_dropping_messages_lose_and_double_nothing(
        small_queue_plant: Plant) -> None:
    plant = small_queue_plant
    # Central handles one message at a time and each waits up to its 5 s busy timeout: the
    # lock is held until a store of an uplink batch has failed (central must not ack it;
    # status messages may meet the lock first, so no fixed time is sure to get there); then
    # 3.5 s that only delay stores.
    plant.wait_produced(10)
    with plant.central_db_write_lock():
        wait_until(lambda: "batch not stored" in plant.log(CENTRAL, tail_chars=10**8),
                   timeout_s=60, interval_s=0.5,
                   what="a batch store failing while the database is locked")
    plant.wait_produced(10)
    with plant.central_db_write_lock():
        time.sleep(3.5)
    # A central that reads nothing at all: the broker's queue for it overflows.
    plant.wait_produced(10)
    plant.pause(CENTRAL)
    try:
        time.sleep(4)  # the outage under test
    finally:
        plant.resume(CENTRAL)
    plant.wait_produced(10)
    delivery = plant.finish()

    store_failures = plant.log(CENTRAL, tail_chars=10**8).count("batch not stored")
    broker_log = plant.broker_log()
    dropping = sorted(set(re.findall(
        r"Outgoing messages are being dropped for client (\S+?)\.?$", broker_log, re.M)))
    uplink = r"\(d0, q1, r0, m\d+, '[^']*/uplink'"
    received = len(re.findall(rf"Received PUBLISH from \S+ {uplink}", broker_log))
    delivered = len(re.findall(rf"Sending PUBLISH to {plant.central_id} {uplink}", broker_log))
    print(f"slow central: {delivery}; central refused to ack {store_failures} batch(es) it "
          f"could not store; broker dropping for {dropping or 'nobody'}: uplink messages "
          f"received {received}, first deliveries to central {delivered}")
    assert store_failures > 0, "the 11 s lock should have made at least one store fail"
