"""The configurations from central kept on the gateway, under `<data_dir>/config/`.

`current.json` is the last good signed document (confirmed after its probation),
`previous.json` the one before it, `pending.json` the one being switched to (written before the
switch, removed once it is confirmed or reverted: found at boot, it means the agent died
mid-switch). `versions/NAME/VERSION.json` keeps the last few versions of each name applied here,
for rollbacks by version and to refuse downgrades. Every write is atomic; files are readable by
the agent's user only (a body may name an OPC-UA user).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.contract import ConfigDocument

log = logging.getLogger(__name__)

CONFIG_FOLDER = "config"
LEDGER_FILE = "commands.json"  # the configuration commands carried out, against replays
CURRENT, PREVIOUS, PENDING = "current.json", "previous.json", "pending.json"
VERSIONS = "versions"
KEEP_VERSIONS = 5  # per name; the newest always among them, so a downgrade stays refused
_PRIVATE = 0o600


def last_good_document(data_dir: Path) -> ConfigDocument | None:
    """The configuration from central last confirmed on this gateway, read without changing
    anything (for `edge-agent status`); None when it runs its own file."""
    return ConfigFiles._read(data_dir / CONFIG_FOLDER / CURRENT)


@dataclass(frozen=True)
class PendingSwitch:
    """A switch under way: the command that asked for it and the document switched to."""

    command_id: str
    document: ConfigDocument


class ConfigFiles:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / CONFIG_FOLDER
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- current, previous, pending ---

    def current(self) -> ConfigDocument | None:
        return self._read(self.folder / CURRENT)

    def previous(self) -> ConfigDocument | None:
        return self._read(self.folder / PREVIOUS)

    def pending(self) -> PendingSwitch | None:
        path = self.folder / PENDING
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_bytes())
            return PendingSwitch(str(data["command_id"]),
                                 ConfigDocument.model_validate(data["document"]))
        except (ValueError, KeyError, TypeError, ValidationError, OSError) as exc:
            log.warning("pending configuration switch %s unreadable, dropped: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def begin_switch(self, command_id: str, document: ConfigDocument) -> None:
        data = {"command_id": command_id, "document": document.model_dump(mode="json")}
        write_atomically(self.folder / PENDING, json.dumps(data), _PRIVATE)

    def end_switch(self) -> None:
        """The switch is over (confirmed, reverted or reported after a restart)."""
        (self.folder / PENDING).unlink(missing_ok=True)

    def make_current(self, document: ConfigDocument | None,
                     previous: ConfigDocument | None) -> None:
        """`document` is the good one now (None: the gateway's own file), `previous` the one
        before; previous first, so a crash between the writes loses no good document."""
        self._write_or_remove(self.folder / PREVIOUS, previous)
        self._write_or_remove(self.folder / CURRENT, document)

    # --- versions kept ---

    def keep_version(self, document: ConfigDocument) -> None:
        folder = self.folder / VERSIONS / document.name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(folder / f"{document.version}.json", document.model_dump_json(),
                         _PRIVATE)
        for version in self.versions(document.name)[:-KEEP_VERSIONS]:
            (folder / f"{version}.json").unlink(missing_ok=True)

    def version(self, name: str, version: int) -> ConfigDocument | None:
        return self._read(self.folder / VERSIONS / name / f"{version}.json")

    def versions(self, name: str) -> list[int]:
        """The versions of `name` kept here, oldest first."""
        folder = self.folder / VERSIONS / name
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def newest_version(self, name: str) -> int | None:
        """The highest version of `name` applied here: lower ones come only by rollback."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    # --- files ---

    def _write_or_remove(self, path: Path, document: ConfigDocument | None) -> None:
        if document is None:
            path.unlink(missing_ok=True)
        else:
            write_atomically(path, document.model_dump_json(), _PRIVATE)

    @staticmethod
    def _read(path: Path) -> ConfigDocument | None:
        if not path.exists():
            return None
        try:
            return ConfigDocument.model_validate_json(path.read_bytes())
        except (ValidationError, OSError) as exc:
            log.warning("configuration file %s unreadable, ignored: %s", path, exc)
            return None
