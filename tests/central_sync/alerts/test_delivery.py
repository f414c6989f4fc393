"""The delivery worker against real receivers: retries until a receiver is back, dead letters
and their retry, a hanging receiver that holds up nothing else, the SCADA topic through
Mosquitto, and `send_test`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import WebhookReceiver, alert_message
from central_helpers import Inbox, run

from central_sync.alert_rules import SCADA_ROUTE, AlertMessage, AlertsConfig
from central_sync.alerts import templates
from central_sync.alerts.channels import DeliveryError
from central_sync.alerts.delivery import DeliveryWorker, retry_delay_s, send_test
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import wait_until_async

TOPICS = Topics("plant")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def alerts_config(*urls: str, **options: Any) -> AlertsConfig:
    routes = [{"name": f"hook-{i}", "kind": "webhook", "url": url, "timeout_s": 2}
              for i, url in enumerate(urls)]
    return AlertsConfig.model_validate({"routes": routes, "retry_initial_s": 5,
                                        "max_attempts": 3, **options})


def db_caller() -> tuple[Callable[..., Any], ThreadPoolExecutor]:
    """Central's one database thread, as the service has it."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-db")

    async def db_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            executor, lambda: fn(*args, **kwargs))

    return db_call, executor


def worker(db: CentralDB, config: AlertsConfig, transport: Any = None,
           base_url: str | None = None) -> tuple[DeliveryWorker, ThreadPoolExecutor]:
    db_call, executor = db_caller()
    return DeliveryWorker(db_call, db, config, transport or MemoryTransport(MemoryBroker()),
                          TOPICS, "central-a", base_url), executor


def enqueue(db: CentralDB, route: str = "hook-0", message: AlertMessage | None = None) -> str:
    message = message or alert_message()
    return db.enqueue_notification(message.alert_id, message.event, route,
                                   message.model_dump_json(), 0.0)


def test_retries_wait_twice_as_long_each_time_up_to_the_longest() -> None:
    config = AlertsConfig(retry_initial_s=5, retry_max_s=60)
    assert [retry_delay_s(config, n) for n in range(1, 6)] == [5, 10, 20, 40, 60]


def test_a_receiver_that_is_down_gets_the_notification_once_when_it_is_back(
        db: CentralDB, receiver: WebhookReceiver) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url))
    notification_id = enqueue(db)
    receiver.stop()
    now = time.time()
    assert run(delivery.run_once(now)) == 0
    failed = db.get_notification(notification_id)
    assert failed is not None and failed.state == "pending" and failed.attempts == 1
    assert "cannot reach" in failed.last_error
    assert failed.next_attempt_at == pytest.approx(now + 5, abs=2)
    assert run(delivery.run_once(now + 1)) == 0  # not due again before its retry
    assert len(db.notification_attempts(notification_id)) == 1

    receiver.start()
    assert run(delivery.run_once(now + 10)) == 1
    assert run(delivery.run_once(now + 10_000)) == 0
    [request] = receiver.received
    sent = AlertMessage.model_validate(request.json())
    assert sent.sent_at == now + 10 and sent.summary == alert_message().summary
    attempts = db.notification_attempts(notification_id)
    assert [a.ok for a in attempts] == [False, True]
    assert attempts[1].detail == "HTTP 200" and attempts[1].duration_ms is not None
    assert db.delivery_summary() == {"pending": 0, "dead": 0}
    executor.shutdown()


def test_after_the_last_attempt_it_is_a_dead_letter_until_retried(
        db: CentralDB, receiver: WebhookReceiver) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url, max_attempts=2))
    receiver.status, receiver.answer = 500, b"internal error"
    notification_id = enqueue(db)
    now = time.time()
    run(delivery.run_once(now))
    run(delivery.run_once(now + 60))
    assert [n.notification_id for n in db.dead_letters()] == [notification_id]
    assert db.get_notification(notification_id).last_error == "HTTP 500: internal error"  # type: ignore[union-attr]
    assert run(delivery.run_once(now + 100_000)) == 0
    assert len(receiver.received) == 2

    receiver.status = 200
    db.retry_notification(notification_id, by="erin")
    assert run(delivery.run_once(time.time() + 1)) == 1
    assert db.get_notification(notification_id).state == "delivered"  # type: ignore[union-attr]
    assert db.delivery_summary() == {"pending": 0, "dead": 0}
    executor.shutdown()


def test_a_notification_for_a_route_no_longer_configured_is_dead_at_once(
        db: CentralDB, receiver: WebhookReceiver) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url))
    notification_id = enqueue(db, route="removed")
    run(delivery.run_once(time.time()))
    dead = db.get_notification(notification_id)
    assert dead is not None and dead.state == "dead"
    assert "route removed is no longer configured" in dead.last_error
    executor.shutdown()


def test_a_fault_in_central_while_sending_is_recorded_and_retried(
        db: CentralDB, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url))
    notification_id = enqueue(db)

    def broken(template: str, message: AlertMessage) -> dict[str, Any]:
        raise KeyError("severity")

    monkeypatch.setattr(templates, "webhook_body", broken)
    now = time.time()
    assert run(delivery.run_once(now)) == 0
    failed = db.get_notification(notification_id)
    assert failed is not None and failed.state == "pending"
    assert failed.last_error == "central failed to send it: KeyError('severity')"
    monkeypatch.undo()
    assert run(delivery.run_once(now + 60)) == 1
    executor.shutdown()


def test_the_link_to_central_is_added_when_the_message_has_none(
        db: CentralDB, receiver: WebhookReceiver) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url),
                                base_url="https://central.example/")
    enqueue(db, message=alert_message(url=""))
    assert run(delivery.run_once(time.time())) == 1
    assert receiver.received[0].json()["url"] == (
        "https://central.example/alerts/a18f0c2d3e4f5a6b7")
    executor.shutdown()


def test_a_hanging_receiver_holds_up_neither_other_routes_nor_the_database(
        db: CentralDB, receiver: WebhookReceiver) -> None:
    hanging = WebhookReceiver(hang=True).start()
    try:
        config = alerts_config(hanging.url, receiver.url)
        delivery, executor = worker(db, config)
        slow = enqueue(db, route="hook-0")
        fast = [enqueue(db, "hook-1", alert_message(alert_id=f"a{i}")) for i in range(6)]

        async def scenario() -> float:
            task = asyncio.create_task(delivery.run(lambda: True))
            started = time.monotonic()
            try:
                await wait_until_async(lambda: len(receiver.received) == len(fast), 5)
                fast_s = time.monotonic() - started
                # The database thread answers meanwhile: sends never run on it.
                summary = await asyncio.wait_for(
                    delivery.db_call(db.delivery_summary), 0.5)
                assert summary["pending"] >= 1  # the slow one is still under way
                await wait_until_async(
                    lambda: db.notification_attempts(slow), 10, what="the slow attempt")
                return fast_s
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        fast_s = run(scenario())
        assert fast_s < 1.5, f"the other route waited {fast_s:.1f} s for the hanging one"
        [attempt] = db.notification_attempts(slow)
        assert not attempt.ok and "timed out" in attempt.detail
        assert attempt.duration_ms is not None and 1500 < attempt.duration_ms < 5000
        assert all(db.get_notification(n).state == "delivered" for n in fast)  # type: ignore[union-attr]
        executor.shutdown()
    finally:
        hanging.stop()


def test_only_the_leader_delivers(db: CentralDB, receiver: WebhookReceiver) -> None:
    delivery, executor = worker(db, alerts_config(receiver.url))
    enqueue(db)
    asked: list[bool] = []
    leading = False

    def is_leader() -> bool:
        asked.append(leading)
        return leading

    async def scenario() -> None:
        nonlocal leading
        task = asyncio.create_task(delivery.run(is_leader))
        try:
            await wait_until_async(lambda: len(asked) >= 2, 5, what="two rounds as follower")
            assert receiver.received == []
            leading = True
            delivery.poke()
            await wait_until_async(lambda: receiver.received, 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(scenario())
    assert len(receiver.received) == 1
    executor.shutdown()


def test_the_scada_topic_is_retried_while_the_broker_is_down_and_cleared_in_order(
        db: CentralDB, mosquitto: Mosquitto) -> None:
    central = MqttTransport(BrokerConfig(port=mosquitto.port), "central-a")
    delivery, executor = worker(db, alerts_config(retry_initial_s=0.2), transport=central)
    open_topic = TOPICS.alerts_open("a18f0c2d3e4f5a6b7")

    async def scenario() -> list[tuple[str, bytes]]:
        await central.start()
        assert await central.wait_connected(10)
        mosquitto.stop()
        fired = enqueue(db, SCADA_ROUTE, alert_message())
        resolved = enqueue(db, SCADA_ROUTE, alert_message("resolved"))
        await delivery.run_once()
        first = db.notification_attempts(fired)
        assert len(first) == 1 and "broker not reachable" in first[0].detail
        assert db.notification_attempts(resolved) == []  # waits behind the fired one
        mosquitto.start()
        assert await central.wait_connected(15)
        listener = MqttTransport(BrokerConfig(port=mosquitto.port), "scada",
                                 persistent_session=False)
        inbox = Inbox()
        await listener.subscribe("plant/alerts/#", inbox)
        await listener.start()
        assert await listener.wait_connected(10)
        try:
            assert await delivery.run_once(time.time() + 60) == 1  # the fired one
            assert await delivery.run_once(time.time() + 60) == 1  # then the resolved one
            await wait_until_async(lambda: len(inbox.messages) >= 4, 10)
        finally:
            await listener.stop()
            await central.stop()
        return inbox.messages

    messages = run(scenario(), 60)
    assert [(t, bool(p)) for t, p in messages] == [
        (open_topic, True), ("plant/alerts/events", True), (open_topic, False),
        ("plant/alerts/events", True)]
    assert AlertMessage.model_validate_json(messages[3][1]).event == "resolved"
    executor.shutdown()


# --- send_test --------------------------------------------------------------------------


def central_config(tmp_path: Path, url: str) -> CentralConfig:
    return CentralConfig.model_validate({
        "central_id": "central-a", "database_url": f"sqlite:///{tmp_path / 'c.db'}",
        "web": {"public_url": "https://central.example"},
        "alerts": {"routes": [{"name": "ops", "kind": "webhook", "url": url}]}})


def test_send_test_sends_a_test_message_through_the_route(
        tmp_path: Path, receiver: WebhookReceiver) -> None:
    config = central_config(tmp_path, receiver.url)
    assert run(send_test(config, "ops")) == "HTTP 200"
    sent = AlertMessage.model_validate(receiver.received[0].json())
    assert (sent.event, sent.central_id, sent.url) == (
        "test", "central-a", "https://central.example/alerts")
    assert "route ops" in sent.summary


def test_send_test_names_the_configured_routes_or_the_failure(
        tmp_path: Path, receiver: WebhookReceiver) -> None:
    config = central_config(tmp_path, receiver.url)
    with pytest.raises(ValueError, match=f"no route pager in alerts.routes; configured: ops, "
                                         f"{SCADA_ROUTE}"):
        run(send_test(config, "pager"))
    receiver.status = 401
    with pytest.raises(DeliveryError, match="HTTP 401"):
        run(send_test(config, "ops"))
    with pytest.raises(DeliveryError, match="broker connection"):
        run(send_test(config, SCADA_ROUTE))
