"""The launcher's choice of release and its trial logic, with stand-in releases: environments
whose bin/python is a small script that records how it was started and exits as told."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge_agent.updates.launcher as launcher
from edge_agent import __version__
from edge_agent.updates.launcher import Supervisor, choose
from edge_agent.updates.layout import (
    EXIT_RESTART,
    EXIT_UNHEALTHY,
    INSTALLED_MARKER,
    ReleaseLayout,
    Trial,
)

STAND_IN = """#!/bin/sh
release="$(cd "$(dirname "$0")/.." && pwd)"
echo "$*" >> "$release/ran"
if [ -f "$release/stderr" ]; then cat "$release/stderr" >&2; fi
if [ -f "$release/confirm" ]; then rm -f "$(cat "$release/confirm")"; fi
if [ -f "$release/hang" ]; then exec sleep 60; fi
code=$(head -n 1 "$release/codes" 2>/dev/null)
if [ -f "$release/codes" ]; then
  tail -n +2 "$release/codes" > "$release/codes.next"; mv "$release/codes.next" "$release/codes"
fi
exit "${code:-0}"
"""


def stand_in(layout: ReleaseLayout, version: str, codes: tuple[int, ...] = (0,),
             stderr: str = "", installed: bool = True) -> Path:
    release = layout.release(version)
    (release / "bin").mkdir(parents=True)
    python = release / "bin" / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    (release / "codes").write_text("".join(f"{code}\n" for code in codes))
    if stderr:
        (release / "stderr").write_text(stderr)
    if installed:
        (release / INSTALLED_MARKER).write_text("{}")
    return release


def runs(release: Path) -> list[str]:
    path = release / "ran"
    return path.read_text().splitlines() if path.exists() else []


def on_trial(layout: ReleaseLayout, new: Path, old: Path | None, healthy_within_s: float = 30,
             ) -> Trial:
    trial = Trial(version=new.name, previous=old.name if old else __version__,
                  command_id="c-1", healthy_within_s=healthy_within_s)
    layout.write_trial(trial)
    layout.activate(new, old)
    return trial


@pytest.fixture
def layout(tmp_path: Path) -> ReleaseLayout:
    layout = ReleaseLayout(tmp_path)
    layout.prepare()
    return layout


def test_the_current_release_is_chosen_else_the_base_install(layout: ReleaseLayout) -> None:
    assert choose(layout).release is None and choose(layout).version == __version__
    release = stand_in(layout, "2.0.0")
    layout.switch(layout.current, release)
    assert choose(layout).release == release and choose(layout).version == "2.0.0"
    unfinished = stand_in(layout, "2.1.0", installed=False)
    layout.switch(layout.current, unfinished)
    assert choose(layout).release is None, "an unfinished install is never started"


def test_the_agent_is_started_from_the_release_with_its_own_interpreter(
        layout: ReleaseLayout, tmp_path: Path) -> None:
    release = stand_in(layout, "2.0.0")
    layout.switch(layout.current, release)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert runs(release) == [f"-P -m edge_agent run -c {tmp_path / 'agent.yaml'} "
                             "--log-level info"]


def test_exit_75_restarts_the_agent(layout: ReleaseLayout, tmp_path: Path) -> None:
    release = stand_in(layout, "2.0.0", codes=(EXIT_RESTART, EXIT_RESTART, 0))
    layout.switch(layout.current, release)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert len(runs(release)) == 3


def test_a_release_on_trial_that_crashes_is_replaced_by_the_previous_one(
        layout: ReleaseLayout, tmp_path: Path) -> None:
    old = stand_in(layout, "2.0.0", codes=(0,))
    new = stand_in(layout, "2.1.0", codes=(3,), stderr="Traceback ...\nImportError: boom\n")
    trial = on_trial(layout, new, old)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert len(runs(new)) == 1 and len(runs(old)) == 1
    assert layout.target(layout.current) == old
    assert layout.target(layout.previous) is None, "the failed release is no one's previous"
    assert layout.read_trial() is None
    failed = layout.read_failed_trial()
    assert failed is not None and failed.trial.command_id == trial.command_id
    assert failed.exit_code == 3
    assert "release 2.1.0 exited with status 3 before it was healthy" in failed.reason
    assert "ImportError: boom" in failed.reason


def test_a_release_on_trial_that_is_not_healthy_in_time_goes_back_to_the_base_install(
        layout: ReleaseLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = stand_in(layout, "2.1.0", codes=(EXIT_UNHEALTHY,))
    on_trial(layout, new, None, healthy_within_s=5)
    # Back on the base install the launcher would start this interpreter's agent: a stand-in.
    original = launcher.agent_command
    base_started: list[bool] = []

    def command(release: Path | None, config: Path, log_level: str) -> list[str]:
        if release is None:
            base_started.append(True)
            return ["/bin/sh", "-c", "exit 0"]
        return original(release, config, log_level)

    monkeypatch.setattr(launcher, "agent_command", command)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert base_started and layout.target(layout.current) is None
    failed = layout.read_failed_trial()
    assert failed is not None and failed.exit_code == EXIT_UNHEALTHY
    assert "not online and healthy within 5 s" in failed.reason


def test_a_release_on_trial_that_hangs_is_stopped_and_replaced(
        layout: ReleaseLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "TRIAL_GRACE_S", 0.3)
    old = stand_in(layout, "2.0.0")
    new = stand_in(layout, "2.1.0")
    (new / "hang").write_text("")
    on_trial(layout, new, old, healthy_within_s=0.2)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    failed = layout.read_failed_trial()
    assert failed is not None and "the launcher stopped it" in failed.reason
    assert layout.target(layout.current) == old and len(runs(old)) == 1


def test_a_release_that_confirmed_itself_is_kept(layout: ReleaseLayout, tmp_path: Path) -> None:
    old = stand_in(layout, "2.0.0")
    new = stand_in(layout, "2.1.0", codes=(EXIT_RESTART, 0))
    (new / "confirm").write_text(str(layout.trial_path))  # as a healthy agent clears it
    on_trial(layout, new, old)
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert len(runs(new)) == 2 and runs(old) == []
    assert layout.target(layout.current) == new and layout.read_failed_trial() is None


def test_without_supervise_a_trial_started_twice_is_replaced_by_the_previous_release(
        layout: ReleaseLayout, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"device_id: gw1\ndata_dir: {tmp_path}\n"
                      "security: {verify_signatures: false}\n")
    old = stand_in(layout, "2.0.0")
    new = stand_in(layout, "2.1.0", codes=(1,))
    on_trial(layout, new, old)
    launch = [str(Path(sys.executable).parent / "edge-agent"), "launch", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    first = subprocess.run(launch, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 1 and len(runs(new)) == 1, first.stderr  # exec: its own code
    second = subprocess.run(launch, capture_output=True, text=True, timeout=60, env=env)
    assert second.returncode == 0, second.stderr
    assert len(runs(old)) == 1 and layout.target(layout.current) == old
    failed = layout.read_failed_trial()
    assert failed is not None and "stopped before it was healthy" in failed.reason


NOTIFYING_STAND_IN = """#!{python}
import os, socket, sys
from pathlib import Path
release = Path(sys.argv[0]).resolve().parent.parent
runs = release / "ran"
count = len(runs.read_text().splitlines()) if runs.exists() else 0
runs.write_text("ran\\n" * (count + 1))
assert "WATCHDOG_PID" not in os.environ
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    for message in ("READY=1\\nSTATUS=started", "WATCHDOG=1", "MAINPID=1", "STOPPING=1"):
        sock.sendto(message.encode(), os.environ["NOTIFY_SOCKET"])
sys.exit(75 if count == 0 else 0)
"""


def test_under_systemd_the_agents_notifications_are_passed_on_as_the_launchers_own(
        layout: ReleaseLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    release = stand_in(layout, "2.0.0")
    (release / "bin" / "python").write_text(NOTIFYING_STAND_IN.format(python=sys.executable))
    layout.switch(layout.current, release)
    systemd_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = tmp_path / "notify"
    systemd_socket.bind(str(address))
    systemd_socket.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Supervisor(layout, tmp_path / "agent.yaml").run() == 0
    assert len(runs(release)) == 2, "restarted once on 75"
    received = []
    while True:
        try:
            received.append(systemd_socket.recv(4096).decode())
        except TimeoutError:
            break
    systemd_socket.close()
    lines = [line for message in received for line in message.split("\n")]
    assert lines.count("READY=1") == 1, received  # the second start is no news to systemd
    assert lines.count("WATCHDOG=1") == 2 and "STATUS=started" in lines
    assert not any(line.startswith("MAINPID") for line in lines), received
    assert received[-1].startswith("STOPPING=1") and lines.count("STOPPING=1") == 1, received
