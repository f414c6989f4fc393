"""systemd service notifications (sd_notify): ready, status lines, stopping, watchdog pings.

One datagram to the unix socket in $NOTIFY_SOCKET ('@': abstract), so no library is needed;
without $NOTIFY_SOCKET (a terminal, the tests) every function here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether this process runs under systemd with notifications (Type=notify)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd; False when not under systemd.

    Never raises: a service must not fail because its supervisor's socket went away.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        log.warning("sd_notify skipped: NOTIFY_SOCKET=%s is not a unix socket path", address)
        return False
    message = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)  # sent from the event loop: never wait long on systemd
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sd_notify failed socket=%s error=%s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def notify_ready(status: str = "") -> bool:
    """Startup is done: systemd marks a Type=notify unit started (and `systemctl start` returns)."""
    return notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))


def notify_status(status: str) -> bool:
    """A one-line state shown by `systemctl status` (e.g. "broker connected, 12 buffered")."""
    return notify(f"STATUS={_one_line(status)}")


def notify_stopping(status: str = "") -> bool:
    """Shutdown has begun, so systemd does not take the time it takes for a hang."""
    return notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))


def watchdog_interval_s() -> float | None:
    """Seconds between watchdog pings: half of $WATCHDOG_USEC; None when no watchdog is asked.

    $WATCHDOG_PID, when set, names the process the watchdog is for; any other (a child that
    inherited the environment) does not ping.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not enabled() or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def ping_watchdog_forever(interval_s: float) -> None:
    """Send WATCHDOG=1 every `interval_s` from the event loop itself: when the loop stalls (a
    blocking call, a deadlock), the pings stop and systemd kills and restarts the service."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


def start_watchdog() -> asyncio.Task[None] | None:
    """Start pinging systemd's watchdog on the running loop; None when no watchdog is asked.

    Cancel the returned task when the service stops. A service (the agent, later central)
    uses this module as:

        watchdog = start_watchdog()    # after startup, on the loop that does the work
        notify_ready("serving")
        ...                            # notify_status("...") now and then
        notify_stopping()
        if watchdog is not None:
            watchdog.cancel()
    """
    interval_s = watchdog_interval_s()
    if interval_s is None:
        return None
    log.info("systemd watchdog on: a ping every %.1f s", interval_s)
    return asyncio.create_task(ping_watchdog_forever(interval_s), name="systemd-watchdog")
