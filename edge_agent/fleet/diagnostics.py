"""Diagnostics central asks of the gateway over MQTT: its log, a diagnosis, a restart of one
pipeline or of the agent, and the time on its clock.

Requests are checked as deploy commands are (central's signature, this device, issued within
the window, not carried out before); a forged, stale or replayed one is counted and logged,
never answered. A genuine one refused (too many in a minute, an unknown pipeline) is answered
with the reason. Answers go live on the diagnostics topic, never through the buffer: one that
cannot be sent now means nothing later.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from edge_agent.config import SecurityConfig
from edge_agent.deployment.checks import CommandWindow, command_refusal
from edge_agent.deployment.ledger import CommandLedger
from edge_agent.fleet.logstreams import LogStreams
from edge_agent.fleet.logtail import LogTail
from edge_agent.fleet.report import ReportedAgent, build_report
from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.contract import (
    ClockProbe,
    ClockReply,
    DiagnoseRequest,
    DiagnosticReply,
    LogRequest,
    RestartCommand,
    Topics,
    encode,
)
from edge_agent.kernel.signing import Verifier
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

DIAGNOSTICS_FOLDER = "diagnostics"  # under the data folder: its command ledger, its restarts
LEDGER_FILE = "commands.json"
RESTARTS_FILE = "agent-restarts.json"
REQUESTS_PER_MINUTE = 20
REFUSALS_PER_MINUTE = 60  # answers to requests over the rate; past this they are only logged
CLOCK_PROBE_INTERVAL_S = 1.0
# An interactive request is useless hours later, and a restart then would surprise: a
# request is valid at most this long (or security.command_max_age_s when shorter). The
# ledger keeps more ids than REQUESTS_PER_MINUTE carries out in that time, so every request
# still valid is remembered and a replay is recognised.
MAX_REQUEST_AGE_S = 3600.0
LEDGER_KEEP = 2000
# systemd gives up on a unit started 10 times in 10 minutes (StartLimitBurst): restarts
# asked from central stay well under that, leaving room for real failures.
AGENT_RESTARTS = 5
AGENT_RESTART_PERIOD_S = 600.0

Signed = LogRequest | DiagnoseRequest | RestartCommand
ACTIONS = {LogRequest: "logs", DiagnoseRequest: "diagnose", RestartCommand: "restart"}


class DiagnosedAgent(ReportedAgent, Protocol):
    def request_restart(self, reason: str) -> None: ...


def request_window(security: SecurityConfig) -> CommandWindow:
    """How long a diagnostic request stays valid: security's window, at most an hour."""
    return CommandWindow(min(security.command_max_age_s, MAX_REQUEST_AGE_S),
                         security.command_clock_skew_s,
                         max_age_setting=f"a diagnostic request: at most "
                         f"{MAX_REQUEST_AGE_S / 3600:g} h, or security.command_max_age_s")


class RecentEvents:
    """How many events in the last `period_s`: at most `limit` are allowed."""

    def __init__(self, limit: int, period_s: float, clock: Callable[[], float]) -> None:
        self.limit, self.period_s = limit, period_s
        self._clock = clock
        self.times: deque[float] = deque(maxlen=limit)

    def allow(self) -> bool:
        """True, counting it, when one more is within the limit now."""
        now = self._clock()
        while self.times and not 0 <= now - self.times[0] < self.period_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


class AgentRestarts(RecentEvents):
    """Restarts of the agent asked from central, remembered across the restarts they make."""

    def __init__(self, path: Path, limit: int = AGENT_RESTARTS,
                 period_s: float = AGENT_RESTART_PERIOD_S) -> None:
        super().__init__(limit, period_s, time.time)
        self.path = path
        try:
            self.times.extend(float(t) for t in json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (ValueError, TypeError):
            log.warning("agent restart record %s unreadable; starting a new one", path)

    def allow(self) -> bool:
        if not super().allow():
            return False
        write_atomically(self.path, json.dumps(list(self.times)))
        return True


@dataclass
class DiagnosticCounts:
    rejected_messages: int = 0  # forged, stale, replayed: never answered
    refused_requests: int = 0  # genuine, refused with the reason
    dropped_clock_probes: int = 0  # more than one a second


class Diagnostics:
    """The handlers for LogRequest, DiagnoseRequest, RestartCommand and ClockProbe."""

    def __init__(self, agent: DiagnosedAgent, device_id: str, topics: Topics,
                 transport: Transport, tail: LogTail, verifier: Verifier | None,
                 window: CommandWindow, folder: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.device_id = device_id
        self._topic = topics.diagnostics(device_id)
        self._transport = transport
        self._verifier = verifier
        self._window = window
        folder.mkdir(parents=True, exist_ok=True)
        self._ledger = CommandLedger(folder / LEDGER_FILE, keep=LEDGER_KEEP)
        self._restarts = AgentRestarts(folder / RESTARTS_FILE)
        self._requests = RecentEvents(REQUESTS_PER_MINUTE, 60.0, clock)
        self._refusals = RecentEvents(REFUSALS_PER_MINUTE, 60.0, clock)
        self._clock = clock
        self._last_probe: float | None = None
        self._started = clock()
        self.logs = LogStreams(device_id, tail, self.send)
        self.counts = DiagnosticCounts()

    @property
    def rejected_messages(self) -> int:
        return self.counts.rejected_messages

    def started(self) -> None:
        """The agent runs from now: its uptime counts from here."""
        self._started = self._clock()

    async def stop(self) -> None:
        await self.logs.stop()

    async def send(self, message: BaseModel) -> bool:
        """Publish an answer now (QoS 1); False, logged, when the broker is not there."""
        try:
            await self._transport.publish(self._topic, encode(message), qos=1)
        except NotConnected as exc:
            log.warning("diagnostic answer not sent device=%s kind=%s: %s", self.device_id,
                        getattr(message, "kind", "?"), exc)
            return False
        return True

    # --- handlers, registered on the agent's command router ---

    async def on_log_request(self, request: LogRequest) -> None:
        if await self._admitted(request):
            log.info("log request device=%s request=%s level=%s lines=%d follow_s=%g by=%s",
                     self.device_id, request.command_id, request.level, request.lines,
                     request.follow_s, request.issued_by)
            await self.logs.answer(request)

    async def on_diagnose_request(self, request: DiagnoseRequest) -> None:
        if not await self._admitted(request):
            return
        report = await build_report(self.agent, self._clock() - self._started)
        log.info("diagnosis sent device=%s request=%s by=%s", self.device_id,
                 request.command_id, request.issued_by)
        await self._reply(request, True, "", report)

    async def on_restart(self, command: RestartCommand) -> None:
        if not await self._admitted(command):
            return
        if command.pipeline is not None:
            await self._restart_pipeline(command, command.pipeline)
            return
        if not self._restarts.allow():
            await self._refuse(command, f"the agent was restarted {AGENT_RESTARTS} times in "
                               f"the last {AGENT_RESTART_PERIOD_S / 60:g} minutes, the most "
                               "allowed (systemd would stop restarting it); ask again later")
            return
        reason = (f"restart asked by {command.issued_by or 'central'} "
                  f"(request {command.command_id})")
        await self._reply(command, True, "the agent stops now and is started again; it "
                          "reports online when it is back")
        self.agent.request_restart(reason)

    async def on_clock_probe(self, probe: ClockProbe) -> None:
        now = self._clock()
        if probe.device_id != self.device_id:
            self._reject(probe.kind, probe.probe_id, f"for device {probe.device_id}")
            return
        if self._last_probe is not None and 0 <= now - self._last_probe < \
                CLOCK_PROBE_INTERVAL_S:
            self.counts.dropped_clock_probes += 1
            log.debug("clock probe dropped device=%s probe=%s: more than one a second",
                      self.device_id, probe.probe_id)
            return
        self._last_probe = now
        await self.send(ClockReply(device_id=self.device_id, probe_id=probe.probe_id,
                                   central_sent_at=probe.central_sent_at,
                                   device_time=time.time()))

    # --- checks and answers ---

    async def _admitted(self, command: Signed) -> bool:
        """True when the request is genuine, fresh, new and within the rate (then recorded
        as carried out); otherwise rejected (counted) or refused (answered)."""
        refusal = command_refusal(command, self.device_id, self._ledger, self._verifier,
                                  window=self._window)
        if refusal is not None:
            self._reject(command.kind, command.command_id, refusal)
            return False
        if not self._requests.allow():
            await self._refuse(command, f"more than {REQUESTS_PER_MINUTE} diagnostic requests "
                               "in the last minute; ask again in a minute")
            return False
        self._ledger.add(command.command_id)
        return True

    def _reject(self, kind: str, request_id: str, reason: str) -> None:
        self.counts.rejected_messages += 1
        log.warning("diagnostic request rejected device=%s kind=%s request=%s reason=%s",
                    self.device_id, kind, request_id, reason)

    async def _refuse(self, command: Signed, detail: str) -> None:
        self.counts.refused_requests += 1
        log.warning("diagnostic request refused device=%s kind=%s request=%s: %s",
                    self.device_id, command.kind, command.command_id, detail)
        if self._refusals.allow():
            await self._reply(command, False, detail)

    async def _reply(self, command: Signed, ok: bool, detail: str,
                     report: dict | None = None) -> None:
        await self.send(DiagnosticReply(
            device_id=self.device_id, request_id=command.command_id,
            action=ACTIONS[type(command)],  # type: ignore[arg-type]
            ok=ok, detail=detail[:4000], report=report or {}))

    async def _restart_pipeline(self, command: RestartCommand, name: str) -> None:
        workload = self.agent.workload
        known = [p.name for p in workload.pipelines]
        if name not in known:
            await self._refuse(command, f"no pipeline {name!r} on this gateway; its pipelines: "
                               f"{', '.join(known) or 'none'}")
            return
        try:
            done = await workload.restart_pipeline(name)
        except ValueError as exc:  # it went away meanwhile (a configuration applied)
            await self._refuse(command, str(exc))
            return
        log.info("pipeline restarted on request device=%s pipeline=%s request=%s by=%s",
                 self.device_id, name, command.command_id, command.issued_by)
        await self._reply(command, True, done)

