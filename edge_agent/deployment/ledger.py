"""The commands this device has carried out, kept across restarts, so that a command delivered
twice (MQTT may) or replayed by an attacker is recognised and ignored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge_agent.kernel.atomic_files import write_atomically

log = logging.getLogger(__name__)

LEDGER_FILE = ".commands.json"  # in the model store's root, beside the models it changed
KEEP_COMMANDS = 1000  # far more than any replay window; the file stays a few tens of KB


class CommandLedger:
    """Ids of the commands carried out, newest last, at most `keep` of them."""

    def __init__(self, path: Path, keep: int = KEEP_COMMANDS) -> None:
        self.path = path
        self.keep = keep
        self._ids: list[str] = []
        if path.exists():
            try:
                self._ids = [str(i) for i in json.loads(path.read_text())][-keep:]
            except (ValueError, TypeError):
                log.warning("command ledger %s unreadable; starting a new one", path)

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._ids

    def add(self, command_id: str) -> None:
        self._ids = [*self._ids, command_id][-self.keep:]
        write_atomically(self.path, json.dumps(self._ids).encode())
