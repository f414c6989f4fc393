"""Alerting as central runs it: the engine, the delivery worker it wakes, and the gateways'
line alerts published after each evaluation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from central_sync.alerts.delivery import DeliveryWorker
from central_sync.alerts.device_alerts import DeviceAlertPublisher
from central_sync.alerts.engine import AlertEngine
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import Transport


class Alerting:
    """One central process's share of alerting; only the process holding the alerts lease
    evaluates and delivers (the others' loops wait)."""

    def __init__(self, config: CentralConfig, db: CentralDB,
                 db_call: Callable[..., Awaitable[Any]], transport: Transport,
                 topics: Topics) -> None:
        alerts = config.alerts
        self.engine = AlertEngine(db, alerts, config.offline_after_s, holder=config.central_id,
                                  public_url=config.web.public_url)
        self.delivery = DeliveryWorker(db_call, db, alerts, transport, topics,
                                       config.central_id, config.web.public_url)
        self.engine.listeners += [self._changed, DeviceAlertPublisher(
            db, transport, topics, alerts.line_label_prefix, alerts.evaluate_interval_s)]

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """What the service runs for as long as it runs."""
        return [self.engine.run(), self.delivery.run(lambda: self.engine.leading)]

    def poke(self) -> None:
        """Ingest or a person changed something the rules read: evaluate soon."""
        self.engine.poke()

    def health(self) -> dict[str, Any]:
        return {"leading": self.engine.leading, "evaluations": self.engine.evaluations,
                "evaluation_failures": self.engine.failures,
                "delivered": self.delivery.delivered, "failed": self.delivery.failed,
                "dead": self.delivery.dead}

    async def _changed(self, changed: list[Alert]) -> None:
        """The engine fired or resolved alerts: their notifications go out now."""
        if changed:
            self.delivery.poke()
