"""systemd notifications of the agent, passed on by the launcher that supervises it.

The launcher is the service's main process; the agent it starts sends READY, STATUS and
WATCHDOG to the launcher's own socket, and the launcher passes them on. It keeps back what would
end the service while it only restarts the agent (STOPPING=1, a second READY=1) and anything
that would make the child the main process, and it pings the watchdog itself while a new agent
is still starting (until its READY=1, at most `startup_s`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from edge_agent.kernel import systemd

log = logging.getLogger(__name__)

PASSED_ON = ("STATUS=", "WATCHDOG=1")
DATAGRAM_BYTES = 4096
POLL_S = 0.5
DEFAULT_STARTUP_S = 120.0  # the unit's TimeoutStartSec: onnxruntime loads slowly on small ARM


class NotifyRelay:
    """A private datagram socket for the child's notifications (a folder only this user may
    enter), forwarded to $NOTIFY_SOCKET by a thread."""

    def __init__(self, startup_s: float = DEFAULT_STARTUP_S) -> None:
        self.startup_s = startup_s
        self._folder = Path(tempfile.mkdtemp(prefix="edge-agent-notify-"))
        self.address = str(self._folder / "notify.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.settimeout(POLL_S)  # so the thread sees close() soon
        self._ready_sent = False
        self._child_ready = threading.Event()
        self._child_started = time.monotonic()
        self._last_ping = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="notify-relay", daemon=True)
        self._thread.start()

    def child_env(self, env: dict[str, str]) -> dict[str, str]:
        """The child's environment: this socket instead of systemd's; no WATCHDOG_PID, so the
        child pings (the launcher passes its pings on as the main process)."""
        return {**{k: v for k, v in env.items() if k != "WATCHDOG_PID"},
                "NOTIFY_SOCKET": self.address}

    def child_started(self) -> None:
        self._child_ready.clear()
        self._child_started = time.monotonic()

    def tick(self, interval_s: float | None) -> None:
        """Ping the watchdog for a child that has not said READY yet, within `startup_s`."""
        now = time.monotonic()
        if interval_s is None or self._child_ready.is_set() or \
                now - self._child_started > self.startup_s or now - self._last_ping < interval_s:
            return
        self._last_ping = now
        systemd.notify("WATCHDOG=1")

    def _serve(self) -> None:
        while True:
            try:
                data = self._socket.recv(DATAGRAM_BYTES)
            except TimeoutError:
                if self._closed:  # only once nothing is left to pass on
                    return
                continue
            except OSError:
                return
            self._forward(data.decode("utf-8", "replace").split("\n"))

    def _forward(self, fields: list[str]) -> None:
        passed = [f for f in fields if f.startswith(PASSED_ON)]
        if "READY=1" in fields:
            self._child_ready.set()
            if not self._ready_sent:
                self._ready_sent = True
                passed.append("READY=1")
        if passed:
            systemd.notify(*passed)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2 * POLL_S)
        self._socket.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def child_env_without_systemd(env: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment when no systemd listens: nothing of it passed on."""
    env = dict(os.environ if env is None else env)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"):
        env.pop(key, None)
    return env
