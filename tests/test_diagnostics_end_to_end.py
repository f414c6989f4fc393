"""`central-sync device logs | diagnose | restart` against a real agent on a real Mosquitto:
what an engineer types on central reaches the gateway signed, and the gateway's answers are
what the commands print, its secrets left out."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from central_sync.cli import main as central
from central_sync.db import CentralDB
from edge_agent import __version__
from edge_agent.kernel.contract import DeviceStatus
from tests.conftest import Mosquitto
from tests.edge_agent.fleet.diagnostics_parts import (
    BROKER_PASSWORD,
    CAMERA_PASSWORD,
    DEVICE,
    running_gateway,
)
from tests.helpers import write_test_keys


def central_config(folder: Path, broker_port: int) -> Path:
    """Central's file, its signing key the one the test agents trust."""
    path = folder / "central-sync.yaml"
    path.write_text(f"central_id: central-test\nbroker:\n  port: {broker_port}\n"
                    "database_url: sqlite:///var/central.db\nartifact_dir: var/artifacts\n"
                    "web:\n  port: 0\n")
    write_test_keys(folder / "var" / "central" / "keys")
    db = CentralDB(f"sqlite:///{folder / 'var' / 'central.db'}")
    db.update_status(DeviceStatus(device_id=DEVICE, state="online"))
    db.close()
    return path


def test_central_commands_read_diagnose_and_restart_a_running_gateway(
        tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "central").mkdir()
    config = central_config(tmp_path / "central", mosquitto.port)

    def device(*args: str) -> tuple[int, str]:
        code = central(["device", *args, "-c", str(config), "--timeout", "10"])
        return code, capsys.readouterr().out

    async def scenario() -> list[tuple[int, str]]:
        async with running_gateway(tmp_path / "gateway", mosquitto.port) as gateway:
            logging.getLogger("tests.line").warning("zone 2 heater current low")
            results = [await asyncio.to_thread(device, "logs", DEVICE, "--level", "warning"),
                       await asyncio.to_thread(device, "diagnose", DEVICE),
                       await asyncio.to_thread(device, "restart", DEVICE, "--pipeline",
                                               "surface")]
            assert not gateway.run.done()
            return results

    (tmp_path / "gateway").mkdir()
    (logs, logs_out), (diagnose, report), (restart, restarted) = asyncio.run(scenario())
    assert logs == 0 and "zone 2 heater current low" in logs_out, logs_out
    assert diagnose == 0 and __version__ in report, report
    assert "dock" in report and "viewer:***@" in report
    assert BROKER_PASSWORD not in report and CAMERA_PASSWORD not in report
    assert restart == 0 and "pipeline surface restarted" in restarted, restarted
