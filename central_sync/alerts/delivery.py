"""The delivery worker: sends the notifications the alert engine enqueued through their
routes, retries with backoff, gives up into the dead-letter list; and `send_test`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from central_sync.alert_rules import SCADA_ROUTE, AlertMessage, AlertsConfig, RouteConfig
from central_sync.alerts.channels import DeliveryError, Publish, publish_scada, send
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.alert_deliveries import Notification
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import Transport

log = logging.getLogger(__name__)

SENDS_AT_ONCE = 4  # a few slow receivers never hold up the others for long
IDLE_WAIT_S = 1.0  # longest sleep between two looks at the queue
SCADA_TIMEOUT_S = 10.0  # the broker's PUBACKs for the SCADA topic
TIMEOUT_MARGIN_S = 2.0  # beyond a route's own timeout before its attempt counts as failed
CLAIM_MARGIN_S = 30.0  # a claimed notification is due again this long after its timeout

DbCall = Callable[..., Awaitable[Any]]


def retry_delay_s(config: AlertsConfig, attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: doubling from retry_initial_s."""
    return min(config.retry_initial_s * 2 ** (attempts - 1), config.retry_max_s)


class DeliveryWorker:
    """Delivers due notifications while this process leads alerting; several at once, each
    in its own task, so a hanging receiver delays only its own notifications."""

    def __init__(self, db_call: DbCall, db: CentralDB, config: AlertsConfig,
                 transport: Transport, topics: Topics, central_id: str,
                 base_url: str | None = None) -> None:
        self.db_call = db_call
        self.db = db
        self.config = config
        self.transport = transport
        self.topics = topics
        self.central_id = central_id
        self.base_url = (base_url or "").rstrip("/")
        self.sends = asyncio.Semaphore(SENDS_AT_ONCE)
        self.in_flight: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0
        self.dead = 0
        self._wake = asyncio.Event()
        timeouts = [route.timeout_s for route in config.routes] + [SCADA_TIMEOUT_S]
        self.claim_s = max(timeouts) + TIMEOUT_MARGIN_S + CLAIM_MARGIN_S

    def poke(self) -> None:
        """Look at the queue now (the engine just enqueued)."""
        self._wake.set()

    async def run_once(self, now: float | None = None) -> int:
        """Deliver the notifications due at `now` and wait for them; how many got through."""
        now = time.time() if now is None else now
        due = await self.db_call(self.db.due_notifications, now, 50, self.claim_s)
        results = await asyncio.gather(*(self._deliver(n, now) for n in due))
        return sum(results)

    async def run(self, is_leader: Callable[[], bool]) -> None:
        """Deliver as notifications fall due, for as long as the service runs; only while
        `is_leader()` (of several central processes, the one holding the alerts lease)."""
        try:
            while True:
                self._wake.clear()  # before looking: a wake-up while looking is not lost
                wait_s = IDLE_WAIT_S
                try:
                    if is_leader():
                        await self._start_due()
                        wait_s = await self._wait_s()
                except Exception:  # the worker outlives a failed query: it looks again soon
                    log.exception("alert notifications not read central=%s; again in %g s",
                                  self.central_id, IDLE_WAIT_S)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for may turn the service's
                # cancellation into a TimeoutError when both meet, and the loop would go on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
        finally:
            # Those cut off are claimed: another attempt follows once the claim runs out.
            for task in self.in_flight:
                task.cancel()

    async def _start_due(self) -> None:
        free = SENDS_AT_ONCE - len(self.in_flight)
        if free <= 0:
            return
        due = await self.db_call(self.db.due_notifications, time.time(), free, self.claim_s)
        for notification in due:
            task = asyncio.create_task(self._deliver(notification, None))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self.in_flight.discard(task)
        self._wake.set()  # a slot is free: the next due one may go
        if not task.cancelled() and task.exception() is not None:
            # The attempt was not recorded (the database failed): the claim runs out, and
            # the notification is tried again then.
            log.error("alert notification attempt not recorded: %r; tried again in %g s",
                      task.exception(), self.claim_s)

    async def _wait_s(self) -> float:
        if len(self.in_flight) >= SENDS_AT_ONCE:
            return IDLE_WAIT_S
        due_at = await self.db_call(self.db.next_notification_due)
        if due_at is None:
            return IDLE_WAIT_S
        return min(max(due_at - time.time(), 0.0), IDLE_WAIT_S)

    async def _deliver(self, notification: Notification, now: float | None) -> bool:
        """Send once and record the attempt; `now` stands for the clock (tests)."""
        async with self.sends:
            started = time.time() if now is None else now
            clock = time.monotonic()
            try:
                detail = await self._send(notification, started)
                ok, dead = True, False
            except _Undeliverable as exc:
                detail, ok, dead = str(exc), False, True
            except DeliveryError as exc:
                detail, ok = str(exc), False
                dead = notification.attempts + 1 >= self.config.max_attempts
            except Exception as exc:  # a fault of central's own: recorded, retried like others
                log.exception("alert notification not sent notification=%s route=%s",
                              notification.notification_id, notification.route)
                detail, ok = f"central failed to send it: {exc!r}", False
                dead = notification.attempts + 1 >= self.config.max_attempts
            duration_ms = (time.monotonic() - clock) * 1000
        attempts = notification.attempts + 1
        delay_s = retry_delay_s(self.config, attempts)
        retry_at = None if ok or dead else started + duration_ms / 1000 + delay_s
        await self.db_call(self.db.record_attempt, notification.notification_id, started, ok,
                           duration_ms, detail, retry_at, dead)
        context = (f"notification={notification.notification_id} alert={notification.alert_id} "
                   f"route={notification.route} event={notification.event} attempt={attempts}")
        if ok:
            self.delivered += 1
            log.info("alert notification delivered %s %s", context, detail)
        elif dead:
            self.dead += 1
            log.warning("alert notification given up %s: %s; retry it from the alerts page "
                        "once the route works", context, detail)
        else:
            self.failed += 1
            log.info("alert notification failed %s: %s; again in %g s", context, detail,
                     delay_s)
        return ok

    async def _send(self, notification: Notification, now: float) -> str:
        try:
            message = AlertMessage.model_validate_json(notification.payload)
        except ValidationError as exc:
            raise _Undeliverable(f"unreadable payload: {exc.errors()[0]['msg']}") from None
        update: dict[str, Any] = {"sent_at": now}
        if not message.url and self.base_url:
            update["url"] = f"{self.base_url}/alerts/{message.alert_id}"
        message = message.model_copy(update=update)
        if notification.route == SCADA_ROUTE:
            sending, timeout_s = publish_scada(message, self.transport.publish,
                                               self.topics), SCADA_TIMEOUT_S
        else:
            route = self.config.route(notification.route)
            if route is None or not route.enabled:
                raise _Undeliverable(
                    f"route {notification.route} is "
                    f"{'disabled' if route else 'no longer configured'}; retry once it is "
                    "back in alerts.routes")
            sending = send(route, message, publish=self.transport.publish, topics=self.topics)
            timeout_s = route.timeout_s
        try:
            async with asyncio.timeout(timeout_s + TIMEOUT_MARGIN_S):
                return await sending
        except TimeoutError:
            raise DeliveryError(f"no answer within {timeout_s:g} s") from None


class _Undeliverable(DeliveryError):
    """Retrying cannot help (the route is gone, the payload unreadable): dead at once."""


def test_message(config: CentralConfig, route_name: str, now: float | None = None
                 ) -> AlertMessage:
    """What `central-sync alerts test ROUTE` sends: says where it comes from and why."""
    now = time.time() if now is None else now
    public_url = config.web.public_url.rstrip("/")
    return AlertMessage(
        event="test", alert_id=f"test-{int(now)}", rule="test", kind="test",
        severity="info", state="firing",
        summary=f"Test notification from central-sync {config.central_id} through route "
                f"{route_name}: if you read this, the route works",
        devices=[], labels={}, fired_at=now, url=f"{public_url}/alerts" if public_url else "",
        central_id=config.central_id, sent_at=now)


async def send_test(config: CentralConfig, route_name: str,
                    publish: Publish | None = None) -> str:
    """Send a test message once through `route_name`; the receiver's answer ("HTTP 200"),
    DeliveryError when it did not get through, ValueError for an unknown route."""
    topics = Topics(config.broker.topic_prefix)
    message = test_message(config, route_name)
    if route_name == SCADA_ROUTE and config.alerts.mqtt_topic:
        # Only the events topic: a retained test alert would stay on SCADA screens.
        route = RouteConfig(name="scada-test", kind="mqtt")
        return await send(route, message, publish=publish, topics=topics)
    route = config.alerts.route(route_name)
    if route is None:
        known = [r.name for r in config.alerts.routes] + (
            [SCADA_ROUTE] if config.alerts.mqtt_topic else [])
        raise ValueError(f"no route {route_name} in alerts.routes; configured: "
                         f"{', '.join(known) or 'none'}")
    try:
        async with asyncio.timeout(route.timeout_s + TIMEOUT_MARGIN_S):
            return await send(route, message, publish=publish, topics=topics)
    except TimeoutError:
        raise DeliveryError(f"no answer within {route.timeout_s:g} s") from None
