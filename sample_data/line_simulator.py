"""OPC-UA server that simulates extrusion line "line-1" by replaying line_history.csv as live tags.

Use it in-process through `LineSimulator`, or run it as a script (see --help).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import NodeData
from asyncua.server.user_managers import UserManager

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edge-mlops:line-simulator"
APPLICATION_URI = "urn:edge-mlops:line-simulator:server"
NAMESPACE_INDEX = 2
ENDPOINT_PATH = "line-1"
OBJECT_NAME = "Line1"
NODE_PREFIX = "line1."
ROW_INDEX_TAG = "row_index"
FAULT_TAG = "fault_tag"
SETPOINT_SUFFIX = "_sp"
SETPOINT_TAGS = ("zone2_temp_c", "screw_speed_rpm")
# Setpoints in the types PLCs use, with their initial values: a Float or Int32 node refuses a
# Double (BadTypeMismatch). The puller's PLC clamps its setpoint, so what it keeps may differ.
TYPED_SETPOINTS: dict[str, tuple[ua.VariantType, float | int]] = {
    "die_temp_c_sp": (ua.VariantType.Float, 205.0),
    "recipe_step_sp": (ua.VariantType.Int32, 3),
    "puller_speed_sp": (ua.VariantType.Double, 12.5),
}
PULLER_SPEED_LIMITS = (0.0, 20.0)
REJECT_TAG = "reject"  # the reject gate a vision pipeline pulses (Int32: 0 idle, 1 reject)
# Context tags: the part changes every PART_ROWS rows, the lot and order less often.
PART_ROWS, LOT_ROWS, ORDER_ROWS = 5, 50, 200
DEFAULT_HISTORY = Path(__file__).resolve().parent / "line_history.csv"

EPILOG = """examples:
  .venv/bin/python sample_data/line_simulator.py --port 4840
  .venv/bin/python sample_data/line_simulator.py --port 4841 --interval-s 0.2 --no-loop
  .venv/bin/python sample_data/line_simulator.py --host 0.0.0.0 --start-row 4608
  .venv/bin/python sample_data/line_simulator.py --certificate server.pem \
      --private-key server-key.pem --users operator:secret

The server prints "READY opc.tcp://HOST:PORT/line-1" once it accepts connections.
Tags: ns=2;s=line1.<column> (Double) for every CSV column but timestamp, and
ns=2;s=line1.row_index (Int64) for the history row being served.
Writable: ns=2;s=line1.<tag>_sp (Double) setpoints for zone2_temp_c and screw_speed_rpm, and
ns=2;s=line1.die_temp_c_sp (Float), line1.recipe_step_sp (Int32) and line1.puller_speed_sp
(Double, clamped to 0..20 by the simulated PLC), ns=2;s=line1.reject (Int32, 0: the reject
gate a vision pipeline pulses), and
ns=2;s=line1.fault_tag (String): write a tag name to publish that tag with status
BadSensorFailure from the next row on, an empty string to clear the fault.
With --certificate/--private-key only Basic256Sha256 (Sign, SignAndEncrypt) is offered; with
--users only those user names and passwords are accepted. The certificate's URI must be
urn:edge-mlops:line-simulator:server.
Context (String): ns=2;s=line1.part_id (a new part every 5 rows), line1.lot (every 50 rows)
and line1.order (every 200 rows).
"""


def node_id_for(tag: str) -> str:
    """Return the NodeId string the simulator uses for a tag, e.g. `ns=2;s=line1.zone2_temp_c`."""
    return f"ns={NAMESPACE_INDEX};s={NODE_PREFIX}{tag}"


def context_for(row: int) -> dict[str, str]:
    """Part, lot and order the line works on at a history row."""
    return {
        "part_id": f"P-{row // PART_ROWS:06d}",
        "lot": f"LOT-{row // LOT_ROWS:04d}",
        "order": f"ORD-{row // ORDER_ROWS:04d}",
    }


def _clamp_puller_speed(node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
    """Keep a written puller speed within the PLC's limits, as a real PLC would."""
    low, high = PULLER_SPEED_LIMITS
    written = value.Value.Value if value.Value is not None else None
    if isinstance(written, float):
        value = ua.DataValue(ua.Variant(min(max(written, low), high), ua.VariantType.Double))
    node.attributes[attr].value = value


def load_history(path: Path | str) -> tuple[list[str], list[list[float]]]:
    """Read a history CSV; return the value columns (all but `timestamp`) and their rows."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if not header or header[0] != "timestamp":
            raise ValueError(f"{path}: first column must be 'timestamp', got {header[:1]}")
        rows = [[float(v) for v in record[1:]] for record in reader if record]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return header[1:], rows


def parse_users(specs: list[str]) -> dict[str, str]:
    """Turn `user:password` strings into a dict; a spec without a colon is an error."""
    users = {}
    for spec in specs:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--users expects user:password, got {spec!r}")
        users[name] = password
    return users


class _PasswordUsers(UserManager):
    """Accepts exactly the configured user names with their passwords, nobody else."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(
        self,
        iserver: object,
        username: str | None = None,
        password: str | None = None,
        certificate: object = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class LineSimulator:
    """Replays a line history over OPC-UA, one row per `interval_s`.

    With `interval_s=None` nothing advances on its own; call `step()` to move to the next row.
    """

    def __init__(
        self,
        history: Path | str = DEFAULT_HISTORY,
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        interval_s: float | None = 1.0,
        loop: bool = True,
        start_row: int = 0,
        certificate: Path | str | None = None,
        private_key: Path | str | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.columns, self._rows = load_history(history)
        if (certificate is None) != (private_key is None):
            raise ValueError("give both certificate and private_key, or neither")
        if not 0 <= start_row < len(self._rows):
            raise ValueError(f"start_row must be in [0, {len(self._rows) - 1}], got {start_row}")
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"interval_s must be positive or None, got {interval_s}")
        self.host = host
        self.port = port
        self.interval_s = interval_s
        self.loop = loop
        self.node_ids: dict[str, str] = {col: node_id_for(col) for col in self.columns}
        self.row_index_node_id = node_id_for(ROW_INDEX_TAG)
        self.fault_node_id = node_id_for(FAULT_TAG)
        self.reject_node_id = node_id_for(REJECT_TAG)
        self.typed_setpoint_node_ids = {tag: node_id_for(tag) for tag in TYPED_SETPOINTS}
        self.context_node_ids = {tag: node_id_for(tag) for tag in context_for(0)}
        self.setpoint_node_ids = {
            tag: node_id_for(tag + SETPOINT_SUFFIX) for tag in SETPOINT_TAGS if tag in self.columns
        }
        self.certificate = certificate
        self.private_key = private_key
        self.users = users
        self._row = start_row
        self._server: Server | None = None
        self._replay_task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """Endpoint URL; after `start()` it carries the bound port (useful with `port=0`)."""
        port = self.port
        if self._server is not None and self._server.bserver is not None:
            port = self._server.bserver.port or port
        return f"opc.tcp://{self.host}:{port}/{ENDPOINT_PATH}"

    @property
    def row_index(self) -> int:
        """Index of the history row currently served."""
        return self._row

    @property
    def row_count(self) -> int:
        """Number of rows in the history."""
        return len(self._rows)

    def current_values(self) -> dict[str, float]:
        """Values of the row currently served, by column."""
        return dict(zip(self.columns, self._rows[self._row], strict=True))

    async def set_fault(self, tag: str) -> None:
        """Publish `tag` as BadSensorFailure from the next row on; an empty string clears it."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        await self._server.write_attribute_value(
            ua.NodeId.from_string(self.fault_node_id),
            ua.DataValue(ua.Variant(tag, ua.VariantType.String)),
        )

    async def start(self) -> None:
        """Build the address space, start listening and, if `interval_s` is set, start replaying.

        Also raises the `asyncua` loggers to WARNING: they are very chatty at INFO.
        """
        if self._server is not None:
            raise RuntimeError("simulator already started")
        logging.getLogger("asyncua").setLevel(
            max(logging.WARNING, logging.getLogger("asyncua").getEffectiveLevel())
        )
        t0 = time.perf_counter()
        server = Server(user_manager=_PasswordUsers(self.users) if self.users else None)
        await server.init()
        await server.set_application_uri(APPLICATION_URI)
        server.set_server_name("edge-mlops line-1 simulator")
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/{ENDPOINT_PATH}")
        await self._configure_security(server)

        ns = await server.register_namespace(NAMESPACE_URI)
        if ns != NAMESPACE_INDEX:
            raise RuntimeError(
                f"namespace {NAMESPACE_URI} got index {ns}, expected {NAMESPACE_INDEX}"
            )
        line = await server.nodes.objects.add_object(
            ua.NodeId(OBJECT_NAME, ns), ua.QualifiedName(OBJECT_NAME, ns)
        )
        for col, value in zip(self.columns, self._rows[self._row], strict=True):
            await line.add_variable(
                ua.NodeId.from_string(self.node_ids[col]),
                ua.QualifiedName(col, ns),
                value,
                varianttype=ua.VariantType.Double,
            )
        await line.add_variable(
            ua.NodeId.from_string(self.row_index_node_id),
            ua.QualifiedName(ROW_INDEX_TAG, ns),
            self._row,
            varianttype=ua.VariantType.Int64,
        )
        for tag, text in context_for(self._row).items():
            await line.add_variable(
                ua.NodeId.from_string(self.context_node_ids[tag]),
                ua.QualifiedName(tag, ns),
                text,
                varianttype=ua.VariantType.String,
            )
        await self._add_writable_nodes(line, ns)
        server.set_attribute_value_setter(
            ua.NodeId.from_string(self.typed_setpoint_node_ids["puller_speed_sp"]),
            _clamp_puller_speed,
        )

        await server.start()
        self._server = server
        logger.info("serving %s (%.2f s to start)", self.endpoint, time.perf_counter() - t0)
        if self.interval_s is not None:
            self._replay_task = asyncio.create_task(self._replay(self.interval_s))

    async def step(self) -> bool:
        """Advance to the next row and publish it; False if the history ended and looping is off."""
        if self._row + 1 >= len(self._rows):
            if not self.loop:
                return False
            self._row = 0
        else:
            self._row += 1
        if self._server is not None:
            await self._write_current_row()
        return True

    async def stop(self) -> None:
        """Stop replaying and close the server; safe to call twice."""
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        if self._server is not None:
            endpoint = self.endpoint
            server, self._server = self._server, None
            await server.stop()
            logger.info("stopped %s", endpoint)

    async def __aenter__(self) -> LineSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _configure_security(self, server: Server) -> None:
        if self.certificate is None or self.private_key is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
            ])
        server.set_identity_tokens(
            [ua.UserNameIdentityToken] if self.users else [ua.AnonymousIdentityToken]
        )

    async def _add_writable_nodes(self, line: Node, ns: int) -> None:
        """Setpoints a client may write, and the fault switch tests use to make a tag go Bad."""
        values = self.current_values()
        for tag, node_id in self.setpoint_node_ids.items():
            node = await line.add_variable(
                ua.NodeId.from_string(node_id),
                ua.QualifiedName(tag + SETPOINT_SUFFIX, ns),
                values[tag],
                varianttype=ua.VariantType.Double,
            )
            await node.set_writable()
        for tag, (varianttype, initial) in TYPED_SETPOINTS.items():
            node = await line.add_variable(
                ua.NodeId.from_string(self.typed_setpoint_node_ids[tag]),
                ua.QualifiedName(tag, ns),
                initial,
                varianttype=varianttype,
            )
            await node.set_writable()
        reject = await line.add_variable(ua.NodeId.from_string(self.reject_node_id),
                                         ua.QualifiedName(REJECT_TAG, ns), 0,
                                         varianttype=ua.VariantType.Int32)
        await reject.set_writable()
        fault = await line.add_variable(
            ua.NodeId.from_string(self.fault_node_id),
            ua.QualifiedName(FAULT_TAG, ns),
            "",
            varianttype=ua.VariantType.String,
        )
        await fault.set_writable()

    def _faulted_tag(self) -> str:
        assert self._server is not None
        value = self._server.read_attribute_value(ua.NodeId.from_string(self.fault_node_id))
        return str(value.Value.Value or "") if value.Value is not None else ""

    async def _write_current_row(self) -> None:
        assert self._server is not None
        now = datetime.now(UTC)
        faulted = self._faulted_tag()
        for col, value in zip(self.columns, self._rows[self._row], strict=True):
            status = ua.StatusCode(
                ua.StatusCodes.BadSensorFailure if col == faulted else ua.StatusCodes.Good
            )
            await self._server.write_attribute_value(
                ua.NodeId.from_string(self.node_ids[col]),
                ua.DataValue(
                    ua.Variant(value, ua.VariantType.Double),
                    StatusCode=status,
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )
        for tag, text in context_for(self._row).items():
            await self._server.write_attribute_value(
                ua.NodeId.from_string(self.context_node_ids[tag]),
                ua.DataValue(
                    ua.Variant(text, ua.VariantType.String),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )
        await self._server.write_attribute_value(
            ua.NodeId.from_string(self.row_index_node_id),
            ua.DataValue(
                ua.Variant(self._row, ua.VariantType.Int64),
                SourceTimestamp=now,
                ServerTimestamp=now,
            ),
        )

    async def _replay(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        # Fixed deadlines, so the pace does not drift by the time each write takes.
        deadline = loop.time()
        while True:
            deadline += interval_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            if not await self.step():
                logger.info("end of history at row %d; holding the last values", self._row)
                return


async def _serve(simulator: LineSimulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows event loops lack add_signal_handler; Ctrl-C then surfaces as KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await simulator.start()
    try:
        print(f"READY {simulator.endpoint}", flush=True)
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="OPC-UA server simulating extrusion line line-1 by replaying a history CSV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=4840, help="TCP port, 0 = any free (default: 4840)"
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=DEFAULT_HISTORY,
        help="history CSV (default: line_history.csv beside this script)",
    )
    parser.add_argument(
        "--interval-s", type=float, default=1.0, help="seconds between rows (default: 1.0)"
    )
    parser.add_argument(
        "--start-row", type=int, default=0, help="history row to serve first (default: 0)"
    )
    parser.add_argument(
        "--no-loop", action="store_true", help="hold the last row instead of starting over"
    )
    parser.add_argument(
        "--certificate",
        type=Path,
        help="server certificate (PEM or DER): offer Basic256Sha256 only",
    )
    parser.add_argument("--private-key", type=Path, help="private key of --certificate (PEM)")
    parser.add_argument(
        "--users",
        nargs="+",
        default=[],
        metavar="USER:PASSWORD",
        help="accept only these users (anonymous access is then refused)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="log level (default: INFO)",
    )
    args = parser.parse_args(argv)
    try:
        simulator = LineSimulator(
            args.history,
            host=args.host,
            port=args.port,
            interval_s=args.interval_s,
            loop=not args.no_loop,
            start_row=args.start_row,
            certificate=args.certificate,
            private_key=args.private_key,
            users=parse_users(args.users) or None,
        )
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_serve(simulator))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # typically the port is taken
        logger.error("cannot serve on %s:%s: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
