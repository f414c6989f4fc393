"""`edge-agent launch`: start the agent release that is current (`<data_dir>/agent/current`,
else the base install) as `<release>/bin/python -m edge_agent run`, and go back to the previous
release when one on trial does not come up healthy.

Without --supervise the launcher replaces itself with the agent (exec); a release on trial that
is launched a second time without having confirmed itself (it crashed, or exited 76: not
healthy in time; systemd started the launcher again) is replaced by the previous one. With
--supervise it stays the parent: it restarts the agent when it exits 75 (restart me), knows
each exit status, keeps the last lines the agent wrote to stderr for the report, and stops a
release on trial that is not healthy within its time plus a grace.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent import __version__
from edge_agent.kernel import systemd
from edge_agent.updates.layout import (
    EXIT_RESTART,
    EXIT_UNHEALTHY,
    FailedTrial,
    ReleaseLayout,
    Trial,
)
from edge_agent.updates.notify_relay import NotifyRelay, child_env_without_systemd

log = logging.getLogger(__name__)

TRIAL_GRACE_S = 30.0  # past healthy_within_s, the launcher stops a release that did not answer
MAX_TRIAL_LAUNCHES = 3  # a release on trial that asks to restart more often has failed
STOP_WAIT_S = 30.0  # the unit's TimeoutStopSec: then the agent is killed
POLL_S = 0.2
TAIL_LINES = 12  # of the agent's stderr, quoted when a release on trial failed
TAIL_LINE_CHARS = 300


@dataclass(frozen=True)
class Choice:
    """What to start: a release's environment (None: the base install) and its trial."""

    release: Path | None
    version: str
    trial: Trial | None


def choose(layout: ReleaseLayout) -> Choice:
    """The current release (or the base install) and the trial that concerns it, if any."""
    release = layout.target(layout.current)
    if release is not None and not layout.is_installed(release):
        log.error("current release %s is not a finished install; starting the base install",
                  release)
        release = None
    version = release.name if release is not None else __version__
    trial = layout.read_trial()
    return Choice(release, version, trial if trial and trial.version == version else None)


def agent_command(release: Path | None, config: Path, log_level: str) -> list[str]:
    """`python -P -m edge_agent run`: -P keeps the working folder off sys.path, so the
    release's own edge_agent is imported whatever folder the service starts in."""
    python = str(release / "bin" / "python") if release is not None else sys.executable
    return [python, "-P", "-m", "edge_agent", "run", "-c", str(config.resolve()),
            "--log-level", log_level]


def revert(layout: ReleaseLayout, trial: Trial, exit_code: int | None, reason: str) -> None:
    """Go back to the release that ran before `trial`, leaving the reason for it to report."""
    layout.write_failed_trial(FailedTrial(trial=trial, exit_code=exit_code, reason=reason))
    back = layout.go_back()
    layout.clear_trial()
    log.error("release %s on trial failed, back to %s: %s", trial.version,
              back or "the base install", reason)


def launch_once(layout: ReleaseLayout, config: Path, log_level: str) -> int:
    """Exec mode: decide on a pending trial, then become the agent (returns only on error)."""
    choice = choose(layout)
    if choice.trial is not None:
        if choice.trial.launches >= 1:
            revert(layout, choice.trial, None,
                   f"release {choice.version} stopped before it was healthy (the launcher "
                   "keeps its exit status and last lines with --supervise)")
            choice = choose(layout)
        else:
            layout.write_trial(choice.trial.model_copy(update={"launches": 1}))
    command = agent_command(choice.release, config, log_level)
    log.info("starting agent %s: %s", choice.version, " ".join(command))
    os.execv(command[0], command)
    return 1  # not reached


class Supervisor:
    """Supervise mode: the agent as a child, restarted on 75, its trial judged by its exit."""

    def __init__(self, layout: ReleaseLayout, config: Path, log_level: str = "info") -> None:
        self.layout = layout
        self.config = config
        self.log_level = log_level
        self.stopping = False
        self._child: subprocess.Popen[bytes] | None = None
        self._relay = NotifyRelay() if systemd.enabled() else None

    def on_signal(self, signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: stop the agent and then this launcher."""
        self.stopping = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        try:
            while True:
                code = self._one_run()
                if code is not None:
                    return code
        finally:
            systemd.notify_stopping("launcher stopping")
            if self._relay is not None:
                self._relay.close()

    def _one_run(self) -> int | None:
        """Start the chosen release once; the exit code to end with, or None to start again."""
        choice = choose(self.layout)
        trial = choice.trial
        if trial is not None:
            trial = trial.model_copy(update={"launches": trial.launches + 1})
            self.layout.write_trial(trial)
        code, tail, timed_out = self._run_child(choice, trial)
        if self.stopping:
            return code if code >= 0 else 0
        pending = self.layout.read_trial()
        if trial is not None and pending is not None and pending.command_id == trial.command_id:
            if code == EXIT_RESTART and not timed_out and trial.launches < MAX_TRIAL_LAUNCHES:
                return None
            revert(self.layout, pending, code, self._reason(trial, code, tail, timed_out))
            return None
        if code == EXIT_RESTART:
            log.info("agent %s asked to be restarted", choice.version)
            return None
        return code

    def _run_child(self, choice: Choice, trial: Trial | None) -> tuple[int, list[str], bool]:
        """Run the agent until it exits: its exit code (negative: killed by that signal), the
        last lines of its stderr, and whether the launcher stopped it for want of health."""
        command = agent_command(choice.release, self.config, self.log_level)
        env = self._relay.child_env(dict(os.environ)) if self._relay else \
            child_env_without_systemd()
        log.info("starting agent %s%s: %s", choice.version, " (on trial)" if trial else "",
                 " ".join(command))
        self._child = child = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
        if self._relay is not None:
            self._relay.child_started()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        relay = threading.Thread(target=_pass_stderr, args=(child.stderr, tail), daemon=True)
        relay.start()
        deadline = None if trial is None else \
            time.monotonic() + trial.healthy_within_s + TRIAL_GRACE_S
        interval_s = systemd.watchdog_interval_s()
        timed_out = False
        while (code := _wait(child, POLL_S)) is None:
            if self._relay is not None:
                self._relay.tick(interval_s)
            if deadline is not None and time.monotonic() > deadline and not timed_out:
                if self.layout.read_trial() is None:
                    deadline = None  # it confirmed itself
                    continue
                timed_out = True
                log.error("agent %s on trial not healthy in time; stopping it", choice.version)
                _stop(child)
        relay.join(timeout=2)
        return code, list(tail), timed_out

    @staticmethod
    def _reason(trial: Trial, code: int, tail: list[str], timed_out: bool) -> str:
        if timed_out:
            why = (f"was not healthy within {trial.healthy_within_s:g} s; the launcher "
                   "stopped it")
        elif code == EXIT_UNHEALTHY:
            why = f"was not online and healthy within {trial.healthy_within_s:g} s"
        elif code < 0:
            why = f"was killed by signal {-code} before it was healthy"
        elif code == EXIT_RESTART:
            why = f"asked to restart {trial.launches} times before it was healthy"
        else:
            why = f"exited with status {code} before it was healthy"
        lines = "\n".join(line[:TAIL_LINE_CHARS] for line in tail)
        return f"release {trial.version} {why}" + (f"; its last lines:\n{lines}" if lines else "")


def _wait(child: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    if _wait(child, STOP_WAIT_S) is None:
        child.kill()


def _pass_stderr(stream: IO[bytes] | None, tail: collections.deque[str]) -> None:
    """Copy the agent's stderr to ours (the journal) line by line, keeping the last lines."""
    if stream is None:
        return
    out = sys.stderr.buffer
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        tail.append(line.decode("utf-8", "replace").rstrip())


def launch(config: Path, data_dir: Path, supervise: bool, log_level: str = "info") -> int:
    """Entry point of `edge-agent launch`."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = ReleaseLayout(data_dir)
    layout.write_base(__version__)
    if supervise:
        return Supervisor(layout, config, log_level).run()
    return launch_once(layout, config, log_level)
