"""Where agent releases live on a gateway and the small files that hand an update from one
agent process to the next: `<data_dir>/agent/` holds `releases/<version>/` (one virtual
environment each), the `current` and `previous` symlinks (switched atomically), the `trial`
of a release just switched to, and the `failed_trial` the launcher leaves when it had to go
back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.kernel.atomic_files import fsync_dir, write_atomically
from edge_agent.kernel.contract import SEMVER_PATTERN

log = logging.getLogger(__name__)

AGENT_FOLDER = "agent"
INSTALLED_MARKER = ".installed"  # written last: a release folder without it is unfinished
# `edge-agent run` exits with this when it asks to be started again (a restart, an update).
EXIT_RESTART = 75
# ... and with this when a release on trial did not become healthy in time.
EXIT_UNHEALTHY = 76

TrialAction = Literal["update", "rollback"]
M = TypeVar("M", bound=BaseModel)


class Trial(BaseModel):
    """A release just switched to, not yet confirmed healthy: written before the switch, removed
    by the new agent once it is online and healthy, or by the launcher when it goes back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(pattern=SEMVER_PATTERN)
    previous: str = Field(description="The version that ran before, which comes back on failure")
    command_id: str = Field(min_length=1, max_length=64)
    healthy_within_s: float = Field(gt=0)
    started: float = Field(default_factory=time.time)
    action: TrialAction = "update"
    launches: int = Field(0, ge=0, description="How often the launcher started it")


class FailedTrial(BaseModel):
    """What the launcher leaves for the agent it went back to, so that agent reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trial: Trial
    exit_code: int | None = None
    reason: str
    at: float = Field(default_factory=time.time)


class ReleaseLayout:
    """The files under `<data_dir>/agent/`; every change of a symlink is atomic."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / AGENT_FOLDER
        self.releases = self.root / "releases"
        self.downloads = self.root / "downloads"
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self.trial_path = self.root / "trial.json"
        self.failed_trial_path = self.root / "failed_trial.json"
        self.ledger_path = self.root / ".commands.json"
        self.base_path = self.root / "base.json"

    def prepare(self) -> None:
        for folder in (self.releases, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)

    def release(self, version: str) -> Path:
        return self.releases / version

    def is_installed(self, release: Path) -> bool:
        return (release / INSTALLED_MARKER).is_file() and (release / "bin" / "python").exists()

    # --- the symlinks ----------------------------------------------------------------------

    def target(self, link: Path) -> Path | None:
        """The environment a symlink names, None when there is none or it is not usable."""
        if not link.is_symlink():
            return None
        target = Path(os.readlink(link))
        target = target if target.is_absolute() else link.parent / target
        return target if (target / "bin" / "python").exists() else None

    def switch(self, link: Path, target: Path | None) -> None:
        """Point `link` at `target` in one step (a symlink under a temporary name renamed over
        it), or remove it when `target` is None."""
        self.root.mkdir(parents=True, exist_ok=True)
        if target is None:
            link.unlink(missing_ok=True)
        else:
            temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            temporary.unlink(missing_ok=True)
            os.symlink(target, temporary)
            os.replace(temporary, link)
        fsync_dir(self.root)

    def is_release(self, environment: Path) -> bool:
        """Whether `environment` is one of the releases here (else: the base install)."""
        return environment.resolve().is_relative_to(self.releases.resolve())

    def activate(self, release: Path | None, previous: Path | None) -> None:
        """`previous` := the release running now (None: the base install), then `current` :=
        `release` (None: the base install)."""
        self.switch(self.previous, previous)
        self.switch(self.current, release)

    def go_back(self) -> Path | None:
        """`current` := what `previous` names (the base install when nothing does), and no
        `previous` any more (the failed release is not one to go back to); returns the
        environment now current, None for the base install."""
        back = self.target(self.previous)
        self.switch(self.current, back)
        self.switch(self.previous, None)
        return back

    def prune(self, running: Path) -> list[str]:
        """Remove the releases that are neither current, previous nor `running` (releases
        only accumulate otherwise); the versions removed."""
        keep = {p.resolve() for p in (self.target(self.current), self.target(self.previous),
                                      running) if p is not None}
        removed = []
        for release in sorted(self.releases.iterdir()) if self.releases.is_dir() else []:
            if release.is_dir() and release.resolve() not in keep:
                shutil.rmtree(release, ignore_errors=True)
                removed.append(release.name)
        return removed

    # --- the base install ------------------------------------------------------------------

    def write_base(self, version: str) -> None:
        """Recorded by the launcher: the version of the base install, which a release going
        back to it must name."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.base_version() != version:
            write_atomically(self.base_path, json.dumps({"version": version}), mode=0o640)

    def base_version(self) -> str | None:
        try:
            return str(json.loads(self.base_path.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- trial files -----------------------------------------------------------------------

    def read_trial(self) -> Trial | None:
        return _read(self.trial_path, Trial)

    def write_trial(self, trial: Trial) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.trial_path, trial.model_dump_json(), mode=0o640)

    def clear_trial(self) -> None:
        self.trial_path.unlink(missing_ok=True)
        fsync_dir(self.root)

    def read_failed_trial(self) -> FailedTrial | None:
        return _read(self.failed_trial_path, FailedTrial)

    def write_failed_trial(self, failed: FailedTrial) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.failed_trial_path, failed.model_dump_json(), mode=0o640)

    def clear_failed_trial(self) -> None:
        self.failed_trial_path.unlink(missing_ok=True)
        fsync_dir(self.root)


def _read(path: Path, kind: type[M]) -> M | None:
    """The file's content, None when absent; an unreadable file is logged and set aside so it
    cannot block every later start."""
    try:
        return kind.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        log.error("%s unreadable, set aside as %s.bad: %s", path, path.name, exc)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".bad"))
        return None


def running_environment() -> Path:
    """The virtual environment (or installation prefix) of this interpreter."""
    return Path(sys.prefix)
