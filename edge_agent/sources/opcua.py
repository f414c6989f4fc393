"""OPC-UA tag source: a subscription to configured nodes, rebuilt whenever the session dies.

It keeps the latest value and a short history of every tag with its source timestamp and status,
writes setpoints back, and reports its own state and every outage (as a gap) with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509

from edge_agent.config import OpcUaSourceConfig
from edge_agent.kernel.contract import SourceGapPayload, SourceState
from edge_agent.kernel.redaction import redact_credentials
from edge_agent.sources.opcua_setpoint import SetpointWriteError, write_verified
from edge_agent.sources.opcua_trust import (
    UntrustedServerCertificate,
    trust_file,
    trusted_server_certificate,
)

log = logging.getLogger(__name__)

for _noisy in ("asyncua", "asyncua.client", "asyncua.common", "asyncua.uaprotocol"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

GapCallback = Callable[[SourceGapPayload], Awaitable[None]]

# A session is declared dead after this many keepalive periods without any publish response.
MISSED_KEEPALIVES = 3
SILENCE_MARGIN_S = 1.0
WATCH_INTERVAL_S = 0.25
WRITE_TIMEOUT_S = 5.0
SESSION_TIMEOUT_MS = 60_000  # the server drops our abandoned sessions after a minute
DISCONNECT_TIMEOUT_S = 2.0  # a dead session's goodbye must not delay the reconnect
MIN_PUBLISHING_MS = 100  # faster publishing costs the server more than it gives us
KEEPALIVE_EVERY_MS = 1000  # the server says "still here" about once a second
LIFETIME_KEEPALIVES = 10  # the server keeps our subscription through this many silent ones
_NOT_CONNECTED = "BadNotConnected"
# Status codes by which a server refuses who we are rather than being unreachable: retrying
# cannot help until someone fixes the credentials or certificates, so the state is "failed".
_REFUSAL_PREFIXES = ("BadUser", "BadIdentity", "BadSecurity", "BadCertificate", "BadNonce")


class SourceConfigError(Exception):
    """The source cannot even try to connect, e.g. the password's environment variable is unset."""


@dataclass(frozen=True)
class TagValue:
    value: float | None
    good: bool
    source_time: float
    received_at: float
    status: str = "Good"


@dataclass
class _Outage:
    started_at: float
    reason: str


class OpcUaSource:
    """Latest values and recent history of the configured tags, from one OPC-UA server.

    `on_gap` is awaited once per outage, when data flows again after the session died.
    `trust_dir` keeps the certificates of servers configured without `server_certificate`.
    """

    def __init__(self, config: OpcUaSourceConfig, on_gap: GapCallback | None = None,
                 trust_dir: Path | None = None) -> None:
        self.config = config
        self.name = config.name
        self.on_gap = on_gap
        self.trust_dir = trust_dir
        self.latest: dict[str, TagValue] = {}
        self.history: dict[str, deque[TagValue]] = {tag: deque() for tag in config.nodes}
        self.state = SourceState(state="connecting", detail=config.endpoint)
        self.reconnects = 0
        self.gaps = 0
        self.last_gap: SourceGapPayload | None = None
        self.unresolved: dict[str, str] = {}
        # When the server last answered (data or keepalive), wall time. OPC-UA reports changes
        # only: a steady value is confirmed by every keepalive, not by a new notification.
        self.confirmed_at = 0.0
        self._tag_by_handle: dict[int, str] = {}
        self._setpoint_nodes: dict[str, Node] = {}
        self._client: Client | None = None
        self._last_contact = time.monotonic()
        self._subscription_problem: str | None = None
        self._loss_reason: str | None = None
        self._outage: _Outage | None = None

    @property
    def bad_tags(self) -> dict[str, str]:
        """Tags not currently good, with their status name or why they could not be found."""
        bad = {tag: value.status for tag, value in self.latest.items() if not value.good}
        return bad | self.unresolved

    async def run(self) -> None:
        """Connect, subscribe and watch the session; on any failure start over with backoff."""
        backoff_s = 0.5
        while True:
            client: Client | None = None
            try:
                client = await self._new_client()
                await client.connect()
                subscription = await self._subscribe(client)
                await self._resolve_setpoints(client)
                self._client = client
                self._set_state("connected", self._connected_detail())
                backoff_s = 0.5
                await self._watch(client, subscription)
            except asyncio.CancelledError:
                await self._drop(client)
                self._set_state("stopped", "")
                raise
            except Exception as exc:  # asyncua raises many types for a lost or refusing server
                await self._drop(client)
                reason = self._loss_reason or _describe(exc)
                self._begin_outage(reason)
                state = "failed" if _is_refusal(exc) else "reconnecting"
                self._set_state(state, f"{reason}; retry in {backoff_s:.1f}s")
                self.reconnects += 1
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.config.reconnect_max_backoff_s)

    async def write(self, tag: str, value: float) -> float | None:
        """Write `value` in the setpoint node's own data type, read it back and compare.

        Returns the value it replaced; raises `SetpointWriteError` with the reason otherwise.
        """
        address = self.config.setpoints.get(tag)
        if address is None:
            raise SetpointWriteError(
                f"{self.name}: tag {tag} has no setpoint node; add it under setpoints in the config"
            )
        client, node = self._client, self._setpoint_nodes.get(tag)
        if client is None or self.state.state != "connected":
            raise SetpointWriteError(
                f"{self.name}: cannot write {tag}: not connected ({self.state.detail})"
            )
        if node is None:
            raise SetpointWriteError(
                f"{self.name}: setpoint node of {tag} not found on the server: {address}"
            )
        return await self._write_verified(tag, node, address, value)

    async def write_node(self, address: str, value: float) -> float | None:
        """Write `value` to the node at NodeId `address` as `write` does (own data type, read
        back); for outputs that are no tag's setpoint, such as a reject gate."""
        client = self._client
        if client is None or self.state.state != "connected":
            raise SetpointWriteError(
                f"{self.name}: cannot write {address}: not connected ({self.state.detail})"
            )
        return await self._write_verified(address, client.get_node(address), address, value)

    async def _write_verified(self, tag: str, node: Node, address: str,
                              value: float) -> float | None:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                previous, typed = await write_verified(node, value, f"{self.name}: {tag} "
                                                                    f"({address})")
        except ua.UaStatusCodeError as exc:
            status = ua.StatusCode(exc.code).name
            raise SetpointWriteError(
                f"{self.name}: server refused to write {tag}={value} to {address}: {status}"
            ) from exc
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise SetpointWriteError(
                f"{self.name}: writing {tag}={value} to {address} failed: {_describe(exc)}"
            ) from exc
        log.info("setpoint written source=%s tag=%s value=%r previous=%s", self.name, tag,
                 typed, previous)
        return previous

    def on_value(self, tag: str, data_value: ua.DataValue) -> SourceGapPayload | None:
        """Store one value of `tag`; return the gap it ends, if it is the first after an outage."""
        now = time.time()
        self._last_contact = time.monotonic()
        status = data_value.StatusCode or ua.StatusCode(ua.StatusCodes.Good)
        source_ts = data_value.SourceTimestamp or data_value.ServerTimestamp
        raw = data_value.Value.Value if data_value.Value is not None else None
        numeric = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        value = TagValue(
            value=numeric,
            good=status.is_good() and numeric is not None,
            source_time=source_ts.timestamp() if source_ts else now,
            received_at=now,
            status=status.name if numeric is not None or not status.is_good() else "NotNumeric",
        )
        before = self.latest.get(tag)
        self.latest[tag] = value
        self._note_quality_change(tag, before, value)
        self._append_history(tag, value)
        return self._end_outage(now)

    async def _on_notification(self, handle: int, data_value: ua.DataValue) -> None:
        tag = self._tag_by_handle.get(handle)
        if tag is None:
            return
        try:
            gap = self.on_value(tag, data_value)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("unusable value source=%s tag=%s error=%s", self.name, tag, exc)
            return
        if gap is not None:
            await self._report_gap(gap)

    def _on_subscription_status(self, status: ua.StatusCode) -> None:
        if not status.is_good():
            self._subscription_problem = f"subscription ended by the server: {status.name}"

    async def _new_client(self) -> Client:
        """A client set up with this source's security and identity, not yet connected."""
        cfg = self.config
        client = Client(cfg.endpoint, timeout=4, watchdog_intervall=1.0)
        client.session_timeout = SESSION_TIMEOUT_MS
        client.connection_lost_callback = self._remember_loss
        if cfg.username:
            client.set_user(cfg.username)
            password = self._password()
            if password is not None:
                client.set_password(password)
        if cfg.security_policy == "Basic256Sha256":
            assert cfg.certificate is not None and cfg.private_key is not None  # config checks
            client.application_uri = _application_uri(cfg.certificate) or client.application_uri
            mode = ua.MessageSecurityMode[cfg.security_mode]
            server_cert = cfg.server_certificate or await self._trusted_certificate(client, mode)
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(cfg.certificate),
                private_key=str(cfg.private_key),
                server_certificate=str(server_cert),
                mode=mode,
            )
        return client

    async def _trusted_certificate(self, client: Client, mode: ua.MessageSecurityMode) -> Path:
        if self.trust_dir is None:
            raise SourceConfigError(
                f"{self.name}: no server_certificate configured and no folder to keep the "
                "server's certificate in; set server_certificate")
        return await trusted_server_certificate(client, SecurityPolicyBasic256Sha256.URI, mode,
                                                trust_file(self.trust_dir, self.name))

    def _password(self) -> str | None:
        if self.config.password is not None:
            return self.config.password.get_secret_value()
        if self.config.password_env is None:
            return None
        password = os.environ.get(self.config.password_env)
        if password is None:
            raise SourceConfigError(
                f"environment variable {self.config.password_env} (password_env of source "
                f"{self.name}) is not set; set it to the OPC-UA user's password"
            )
        return password

    async def _subscribe(self, client: Client) -> Any:
        """Resolve the nodes and create one subscription; unresolvable tags are reported."""
        self.unresolved = {}
        self._subscription_problem = None
        self._loss_reason = None
        tags, nodes = [], []
        for tag, address in self.config.nodes.items():
            node = await self._resolve(client, tag, address, self.unresolved)
            if node is not None:
                tags.append(tag)
                nodes.append(node)
        publishing_ms, keepalive_count = self._publishing()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            RequestedMaxKeepAliveCount=keepalive_count,
            RequestedLifetimeCount=keepalive_count * LIFETIME_KEEPALIVES,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        subscription = await client.create_subscription(params, _Handler(self))
        requests = [self._monitor_request(handle, node) for handle, node in enumerate(nodes, 1)]
        self._tag_by_handle = dict(enumerate(tags, 1))
        results = await subscription.create_monitored_items(requests) if requests else []
        for handle, result in enumerate(results, 1):
            if isinstance(result, ua.StatusCode):
                tag = self._tag_by_handle.pop(handle)
                self.unresolved[tag] = f"{self.config.nodes[tag]}: {result.name}"
        for tag, why in self.unresolved.items():
            log.warning("tag not subscribed source=%s tag=%s reason=%s", self.name, tag, why)
        self._last_contact = time.monotonic()
        return subscription

    async def _resolve(self, client: Client, tag: str, address: str,
                       problems: dict[str, str]) -> Node | None:
        """The node at a NodeId or browse path; None (with the reason in `problems`) if absent."""
        if not address.startswith("/"):
            return client.get_node(address)
        try:
            return await client.nodes.root.get_child(address.strip("/").split("/"))
        except ua.UaStatusCodeError as exc:
            problems[tag] = f"browse path {address} not found ({ua.StatusCode(exc.code).name})"
            return None

    async def _resolve_setpoints(self, client: Client) -> None:
        self._setpoint_nodes = {}
        problems: dict[str, str] = {}
        for tag, address in self.config.setpoints.items():
            node = await self._resolve(client, tag, address, problems)
            if node is not None:
                self._setpoint_nodes[tag] = node
        for tag, why in problems.items():
            log.warning("setpoint not found source=%s tag=%s reason=%s", self.name, tag, why)

    def _monitor_request(self, handle: int, node: Node) -> ua.MonitoredItemCreateRequest:
        parameters = ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=float(self.config.sampling_interval_ms),
            QueueSize=1,
            DiscardOldest=True,
        )
        if self.config.deadband is not None:
            parameters.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute,
                DeadbandValue=self.config.deadband,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=parameters,
        )

    def _publishing(self) -> tuple[float, int]:
        """Publishing interval (ms) and keepalive count: a keepalive about every second."""
        publishing_ms = float(max(self.config.sampling_interval_ms, MIN_PUBLISHING_MS))
        return publishing_ms, max(1, math.ceil(KEEPALIVE_EVERY_MS / publishing_ms))

    def _silence_limit_s(self) -> float:
        publishing_ms, keepalive_count = self._publishing()
        return MISSED_KEEPALIVES * publishing_ms * keepalive_count / 1000 + SILENCE_MARGIN_S

    async def _watch(self, client: Client, subscription: Any) -> None:
        """Return never; raise as soon as the session looks dead.

        asyncua only notices a closed socket or a failed probe; a server that hangs, or a
        subscription the server dropped, shows as silence: no data change and no keepalive.
        """
        limit_s = self._silence_limit_s()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await client.check_connection()
            if self._subscription_problem:
                raise ConnectionError(self._subscription_problem)
            # Keepalives update only the subscription's own clock, data changes update ours.
            last_publish = getattr(subscription, "last_publish_at", None) or 0.0
            silent_s = time.monotonic() - max(self._last_contact, last_publish)
            if silent_s > limit_s:
                raise ConnectionError(f"no data or keepalive for {silent_s:.1f} s")
            self.confirmed_at = time.time() - silent_s

    async def _remember_loss(self, exc: Exception) -> None:
        """asyncua's own watchdog saw the loss first: keep its reason, which is the precise one."""
        self._loss_reason = f"connection lost: {_describe(exc)}"

    def _begin_outage(self, reason: str) -> None:
        """Mark the values stale and remember when data stopped, once per outage."""
        self._client = None
        if self._outage is not None or not self.latest:
            return
        silent_s = time.monotonic() - self._last_contact
        self._outage = _Outage(started_at=time.time() - silent_s, reason=reason)
        for tag, value in self.latest.items():
            self.latest[tag] = dataclasses.replace(value, good=False, status=_NOT_CONNECTED)
        log.warning("source data stopped source=%s reason=%s", self.name, reason)

    def _end_outage(self, now: float) -> SourceGapPayload | None:
        outage, self._outage = self._outage, None
        if outage is None:
            return None
        gap = SourceGapPayload(
            source=self.name,
            started_at=outage.started_at,
            ended_at=now,
            duration_s=max(0.0, now - outage.started_at),
            reason=outage.reason,
        )
        self.gaps += 1
        self.last_gap = gap
        log.info("source data resumed source=%s gap_s=%.1f reason=%s", self.name, gap.duration_s,
                 gap.reason)
        return gap

    async def _report_gap(self, gap: SourceGapPayload) -> None:
        if self.on_gap is None:
            return
        try:
            await self.on_gap(gap)
        except Exception:
            log.exception("gap record not stored source=%s", self.name)

    def _append_history(self, tag: str, value: TagValue) -> None:
        window = self.history.setdefault(tag, deque())
        window.append(value)
        oldest_kept = value.source_time - self.config.history_s
        while window and window[0].source_time < oldest_kept:
            window.popleft()

    def _note_quality_change(self, tag: str, before: TagValue | None, after: TagValue) -> None:
        """Log and report a tag going bad or recovering, once per change, not per value."""
        if before is not None and (before.good, before.status) == (after.good, after.status):
            return
        if before is None and after.good:
            return
        if not (after.good and before is not None and before.status == _NOT_CONNECTED):
            # Values back after an outage are not logged per tag: the outage has its own line.
            log.info("tag quality source=%s tag=%s status=%s", self.name, tag, after.status)
        if self.state.state == "connected":
            self._set_state("connected", self._connected_detail())

    def _connected_detail(self) -> str:
        bad = self.bad_tags
        if not bad:
            return self.config.endpoint
        listed = ", ".join(f"{tag}={why}" for tag, why in sorted(bad.items()))
        return f"{self.config.endpoint}; not good: {listed}"

    def _set_state(self, state: str, detail: str) -> None:
        detail = redact_credentials(detail)  # an endpoint may name user:password@
        if state != self.state.state:
            log.info("source state source=%s state=%s detail=%s", self.name, state, detail)
        self.state = SourceState(state=state, detail=detail)  # type: ignore[arg-type]

    async def _drop(self, client: Client | None) -> None:
        self._client = None
        if client is None:
            return
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await client.disconnect()
        except Exception as exc:  # the session is already gone; nothing more to do
            log.debug("disconnect after failure: %s", exc)


class _Handler:
    """Receives asyncua's notifications and hands them to the source."""

    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    async def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        item = data.monitored_item
        await self._source._on_notification(item.ClientHandle, item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._source._on_subscription_status(status.Status)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return str(exc)  # the server's text, ending with the status name
    if isinstance(exc, TimeoutError) and not str(exc):
        return "the server did not answer in time (TimeoutError)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_refusal(exc: BaseException) -> bool:
    """True when the server refused our identity or security, or our own setup is incomplete."""
    if isinstance(exc, SourceConfigError | FileNotFoundError | UntrustedServerCertificate):
        return True
    if isinstance(exc, ua.UaStatusCodeError):
        return ua.StatusCode(exc.code).name.startswith(_REFUSAL_PREFIXES)
    return False


def _application_uri(certificate: Path) -> str | None:
    """The URI in the certificate: the client must announce it as its application URI."""
    data = certificate.read_bytes()
    cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data))
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
