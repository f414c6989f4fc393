"""The demo: a broker, central, a simulated extrusion line over OPC-UA and one edge agent.

It publishes the sample models, deploys them to the agent over MQTT and shows the
predictions, recommendations and defects arriving in central. Everything runs on loopback;
Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from demo_loop import DATASET, NEW_VERSION, run_loop
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = REPO / "sample_data" / "scrap_model.onnx"
METADATA = REPO / "sample_data" / "scrap_model.json"
VISION_FILE = REPO / "sample_data" / "surface_defects.onnx"
VISION_METADATA = REPO / "sample_data" / "surface_defects.json"
DEVICE = "line1-gw1"
DEMO_USER, DEMO_PASSWORD = "demo", "edge-mlops-demo"  # loopback only; printed for the reader
DEMO_ENV = {**os.environ, "CENTRAL_SYNC_USER": DEMO_USER, "CENTRAL_SYNC_PASSWORD": DEMO_PASSWORD}
# A version is approved by a second account, never the one that published it.
DEMO_REVIEWER = "demo-reviewer"
REVIEWER_ENV = {**DEMO_ENV, "CENTRAL_SYNC_USER": DEMO_REVIEWER}
VISION_MODEL = "surface-defects"
VIDEO = REPO / "sample_data" / "surface_line.mp4"
console = Console(soft_wrap=True)

EPILOG = """examples:
  bash deploy/demo.sh                      # set up, then run until Ctrl-C
  .venv/bin/python deploy/demo.py --duration 120
  .venv/bin/python deploy/demo.py --fresh  # forget the previous demo's data first
"""


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.processes: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], ready: str | None = None,
              timeout_s: float = 60.0) -> subprocess.Popen:
        """Start a child process; wait for a line containing `ready` on its stdout if given."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_file = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE if ready else log_file, stderr=log_file,
            cwd=REPO, start_new_session=True,
        )
        self.processes.append((name, process))
        if ready:
            deadline = time.monotonic() + timeout_s
            assert process.stdout is not None
            for raw in process.stdout:
                if ready in raw.decode(errors="replace"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not get ready in {timeout_s:.0f} s")
            else:
                raise RuntimeError(f"{name} exited early; see {self.logs / (name + '.log')}")
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early; see {self.logs / (name + '.log')}")
        return process

    def stop_all(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{name} did not stop in 15 s; killing it[/]")
                    process.kill()
                    process.wait()
            console.print(f"  stopped {name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer on {url} within {timeout_s:.0f} s")


API_HEADERS: dict[str, str] = {}  # central's API token, once the demo account exists


def get_json(url: str) -> object:
    request = urllib.request.Request(url, headers=API_HEADERS)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path(
        "/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run `bash deploy/setup.sh` as root, "
                           "or `sudo apt-get install -y mosquitto`")
    return found


def write_configs(workdir: Path, ports: dict[str, int]) -> tuple[Path, Path]:
    central = workdir / "central-sync.yaml"
    central.write_text(
        "central_id: demo-central\n"
        f"broker: {{host: 127.0.0.1, port: {ports['mqtt']}}}\n"
        "database_url: sqlite:///central/central.db\n"
        "artifact_dir: central/artifacts\n"
        f"web: {{host: 127.0.0.1, port: {ports['central_web']}}}\n"
        "signing_key_path: central/keys/signing.key\n"
        # A new line has no week of defect history to compare with, so the demo judges each
        # class against a fixed rate: the sample strip's scratches come faster than 3x that,
        # which opens an alert on central's pages and the gateway's operator page.
        "alerts:\n"
        "  evaluate_interval_s: 5\n"
        "  rules:\n"
        "    - {name: defect-rate, kind: defect_rate, fixed_per_hour: 20, window_s: 600,\n"
        "       min_count: 5, operator: true}\n"
    )
    agent_template = (REPO / "deploy" / "edge-agent.example.yaml").read_text()
    agent = workdir / "edge-agent.yaml"
    text = (
        agent_template.replace("port: 1883 ", f"port: {ports['mqtt']} ")
        .replace("opc.tcp://127.0.0.1:4840/", f"opc.tcp://127.0.0.1:{ports['opcua']}/")
        .replace("data_dir: var/edge-agent", "data_dir: agent")
        .replace("interval_s: 5 ", "interval_s: 2 ")
        .replace("port: 8080 ", f"port: {ports['agent_web']} ")
        .replace("status_interval_s: 10", "status_interval_s: 5")
        # model_stats (latency, drift) every 30 s, so the model pages have data at once.
        .replace("monitoring_interval_s: 300", "monitoring_interval_s: 30")
        .replace("central_public_key: central-signing.pub",
                 "central_public_key: central/keys/signing.pub")
    )
    document = yaml.safe_load(text)
    # The operator's recommendations: zone 2 temperature and screw speed, within safe limits.
    process = next(p for p in document["pipelines"] if p["type"] == "process")
    process["recommend"] = {
        "controls": {"zone2_temp_c": {"min": 178, "max": 192, "step": 0.5, "max_change": 4},
                     "screw_speed_rpm": {"min": 54, "max": 68, "step": 0.5, "max_change": 3}},
        "objective": {"type": "minimise", "output": "scrap_rate_pct"},
        "min_improvement": 0.1, "hold_s": 120, "outcome_after_s": 60}
    # The camera line: the sample strip video, looping, through the surface-defect model.
    document["sources"].append({
        "name": "strip-camera", "type": "camera", "url": str(VIDEO), "loop": True,
        "rois": [{"name": "inspection", "x": 128, "y": 58, "width": 64, "height": 64}]})
    document["pipelines"].append({
        "name": "surface", "type": "vision", "source": "strip-camera", "model": VISION_MODEL,
        "defects": {"classes": ["scratch", "pit", "stain"], "min_confidence": 0.8,
                    "min_consecutive": 2, "cooldown_s": 0.5},
        "sampling": {"uncertain_band": [0.45, 0.6], "per_hour": 20},
        "runtime": {"intra_op_threads": 1}})
    agent.write_text("# Written by deploy/demo.py from deploy/edge-agent.example.yaml\n"
                     + yaml.safe_dump(document, sort_keys=False))
    return central, agent


def run(workdir: Path, duration_s: float | None) -> int:
    demo = Demo(workdir)
    ports = {k: free_port() for k in ("mqtt", "opcua", "central_web", "agent_web")}
    central_cfg, agent_cfg = write_configs(workdir, ports)
    central_url = f"http://127.0.0.1:{ports['central_web']}"
    agent_url = f"http://127.0.0.1:{ports['agent_web']}"
    started = time.monotonic()
    try:
        console.rule("[bold]edge MLOps demo")
        broker_dir = workdir / "mosquitto"
        broker_dir.mkdir(parents=True, exist_ok=True)
        (broker_dir / "mosquitto.conf").write_text(
            f"listener {ports['mqtt']} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {broker_dir}/\n"
            f"log_dest file {workdir / 'logs' / 'mosquitto.log'}\n"
            # As root, Mosquitto would switch to a 'mosquitto' user that cannot write here.
            f"{'user root' if os.geteuid() == 0 else ''}\n"
        )
        broker = demo.start("mosquitto", [mosquitto_binary(), "-c",
                                          str(broker_dir / "mosquitto.conf")])
        _wait_port(ports["mqtt"], broker)
        console.print(f"[green]✓[/] Mosquitto broker       mqtt://127.0.0.1:{ports['mqtt']}")
        demo.start("line-simulator", [str(BIN / "python"), "sample_data/line_simulator.py",
                                      "--port", str(ports["opcua"]), "--interval-s", "1"],
                   ready="READY")
        console.print(f"[green]✓[/] OPC-UA line simulator  opc.tcp://127.0.0.1:{ports['opcua']}"
                      "/line-1")
        if not (workdir / "central" / "keys" / "signing.key").exists():
            keys = subprocess.run([str(BIN / "central-sync"), "keys", "init", "-c",
                                   str(central_cfg)], capture_output=True, text=True, cwd=REPO)
            if keys.returncode != 0:
                raise RuntimeError(f"signing key not created: {keys.stderr.strip()}")
        console.print("[green]✓[/] signing key            central/keys/signing.key "
                      "(agents trust central/keys/signing.pub)")
        central = demo.start("central-sync", [str(BIN / "central-sync"), "serve", "-c",
                                              str(central_cfg)])
        wait_http(f"{central_url}/healthz", 60, central, "central-sync")
        console.print(f"[green]✓[/] central-sync           {central_url}/")
        _demo_account(central_cfg)
        console.print(f"[green]✓[/] account {DEMO_USER!r} (admin)   central's pages: log in with "
                      f"password {DEMO_PASSWORD!r}")
        for file, meta, name, kind in ((MODEL, METADATA, "extruder-scrap", "process"),
                                       (VISION_FILE, VISION_METADATA, VISION_MODEL, "vision")):
            publish = subprocess.run(
                [str(BIN / "central-sync"), "model", "publish", str(file), "--name", name,
                 "--version", "1.0.0", "--kind", kind, "--metadata", str(meta),
                 "-c", str(central_cfg)], capture_output=True, text=True, cwd=REPO,
                env=DEMO_ENV)
            if publish.returncode != 0:
                raise RuntimeError(f"model publish failed: {publish.stderr.strip()}")
            console.print(f"[green]✓[/] published model        {name} 1.0.0 ({kind})")
            _evaluate_and_approve(central_cfg, name)
        agent = demo.start("edge-agent", [str(BIN / "edge-agent"), "run", "-c", str(agent_cfg)])
        wait_http(f"{agent_url}/healthz", 60, agent, "edge-agent")
        console.print(f"[green]✓[/] edge-agent {DEVICE}     {agent_url}/")
        _deploy_first_versions(central_cfg)
        run_loop(console, lambda user, *args: _central(
            central_cfg, {**DEMO_ENV, "CENTRAL_SYNC_USER": user}, *args),
            central_cfg, workdir, DEVICE, labeller=DEMO_USER, reviewer=DEMO_REVIEWER)
        _push_line_configuration(central_cfg, agent_cfg, workdir)
        _diagnose_gateway(central_cfg)
        _print_where(workdir, central_cfg, agent_cfg, central_url, agent_url)
        _follow_predictions(demo, central_url, started, duration_s)
    except KeyboardInterrupt:
        console.print("\nCtrl-C: stopping")
    except RuntimeError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        console.print(f"logs: {demo.logs}")
        demo.stop_all()
        return 1
    demo.stop_all()
    return 0


def _deploy_first_versions(central_cfg: Path) -> None:
    for name in ("extruder-scrap", VISION_MODEL):
        console.print(f"[bold]→[/] deploying {name} 1.0.0 to the gateway over MQTT ...")
        deploy = subprocess.run(
            [str(BIN / "central-sync"), "deploy", f"{name}@1.0.0", "--device", DEVICE,
             "--wait", "120", "-c", str(central_cfg)], capture_output=True, text=True,
            cwd=REPO, env=DEMO_ENV)
        output = deploy.stdout + deploy.stderr
        if deploy.returncode != 0 and "already deployed here" in output:
            # An earlier run's loop left a newer version on the gateway, which refuses
            # to go back without a signed rollback: keep it.
            console.print(f"[green]✓[/] {name}: {DEVICE} already runs a newer version "
                          "(an earlier run's loop)")
            continue
        for line in output.strip().splitlines():
            console.print(f"    {line}")
        if deploy.returncode != 0:
            raise RuntimeError("deployment did not complete; see the logs below")


def _push_line_configuration(central_cfg: Path, agent_cfg: Path, workdir: Path) -> None:
    """The gateway's sources and pipelines, from now on a configuration from central: the
    camera pipeline's defects count from a confidence of 0.75, pushed as line1@N."""
    document = yaml.safe_load(agent_cfg.read_text())
    for pipeline in document["pipelines"]:
        if pipeline["type"] == "vision":
            pipeline["defects"]["min_confidence"] = 0.75
    line = workdir / "line1-config.yaml"
    line.write_text("# The line's sources and pipelines, pushed from central by deploy/demo.py\n"
                    + yaml.safe_dump({k: document[k] for k in ("sources", "pipelines")},
                                     sort_keys=False))
    console.print(f"[bold]→[/] pushing the line's configuration from central ({line.name}) ...")
    pushed = _central(central_cfg, DEMO_ENV, "config", "push", str(line), "--name", "line1",
                      "--device", DEVICE, "--canary", "0", "--probation-s", "10",
                      "--notes", "surface defects from 0.75 confidence", "--wait",
                      "--timeout", "120")
    if pushed.returncode != 0:
        raise RuntimeError(f"config push failed: {(pushed.stdout + pushed.stderr).strip()}")
    where = _central(central_cfg, DEMO_ENV, "config", "where", "line1")
    console.print(f"[green]✓[/] configuration line1     confirmed on {DEVICE} "
                  "(`central-sync config where line1`):")
    for text in where.stdout.strip().splitlines():
        console.print(f"    {text}", highlight=False)


def _diagnose_gateway(central_cfg: Path) -> None:
    """What `device diagnose` tells about the gateway, over MQTT: versions, clock, sources."""
    diagnosed = _central(central_cfg, DEMO_ENV, "device", "diagnose", DEVICE)
    if diagnosed.returncode != 0:
        raise RuntimeError(f"device diagnose failed: "
                           f"{(diagnosed.stdout + diagnosed.stderr).strip()}")
    console.print(f"[green]✓[/] diagnosed {DEVICE}      (`central-sync device diagnose "
                  f"{DEVICE}`; logs: `device logs {DEVICE} --follow`):")
    for text in diagnosed.stdout.strip().splitlines()[:4]:
        console.print(f"    {text}", highlight=False)


def _central(central_cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "central-sync"), *args, "-c", str(central_cfg)],
                          capture_output=True, text=True, cwd=REPO, env=env)


def _evaluate_and_approve(central_cfg: Path, name: str) -> None:
    """The review every version passes before it may be deployed: evaluated beside the
    version serving now (nothing is labelled or measured yet on a new line, and the report
    says so), then approved by a second account."""
    ref = f"{name}@1.0.0"
    evaluated = _central(central_cfg, DEMO_ENV, "model", "evaluate", ref)
    if evaluated.returncode != 0:
        raise RuntimeError(f"model evaluate failed: {evaluated.stderr.strip()}")
    approved = _central(central_cfg, REVIEWER_ENV, "model", "approve", ref)
    if approved.returncode != 0 and "already approved" not in approved.stderr:
        raise RuntimeError(f"model approve failed: {approved.stderr.strip()}")
    console.print(f"[green]✓[/] evaluated, approved     {ref} by {DEMO_REVIEWER} (a version "
                  "deploys once a second account approves it)")


def _demo_account(central_cfg: Path) -> None:
    """The demo's admin account: central's pages need a login, and so does its CLI once an
    account exists (the demo's commands log in with it). Kept when the demo runs again."""
    added = subprocess.run(
        [str(BIN / "central-sync"), "users", "add", DEMO_USER, "--role", "admin",
         "--password-env", "CENTRAL_SYNC_PASSWORD", "-c", str(central_cfg)],
        capture_output=True, text=True, cwd=REPO, env=DEMO_ENV)
    if added.returncode != 0 and "exists" not in added.stderr:
        raise RuntimeError(f"demo account not created: {added.stderr.strip()}")
    reviewer = _central(central_cfg, DEMO_ENV, "users", "add", DEMO_REVIEWER, "--role",
                        "engineer", "--password-env", "CENTRAL_SYNC_PASSWORD")
    if reviewer.returncode != 0 and "exists" not in reviewer.stderr:
        raise RuntimeError(f"reviewer account not created: {reviewer.stderr.strip()}")
    # Central's JSON API needs a login once accounts exist: the demo reads it with a token.
    token = subprocess.run(
        [str(BIN / "central-sync"), "users", "token", DEMO_USER, "--days", "1",
         "-c", str(central_cfg)], capture_output=True, text=True, cwd=REPO, env=DEMO_ENV)
    if token.returncode != 0:
        raise RuntimeError(f"demo API token not made: {token.stderr.strip()}")
    API_HEADERS["Authorization"] = f"Bearer {token.stdout.strip()}"


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mosquitto does not listen on {port}")


def _print_where(workdir: Path, central_cfg: Path, agent_cfg: Path, central_url: str,
                 agent_url: str) -> None:
    table = Table(title="Look here", show_header=False)
    table.add_row("central web page", f"{central_url}/")
    table.add_row("defect review, models, rollouts",
                  f"{central_url}/review  {central_url}/models  {central_url}/rollouts  "
                  f"(user {DEMO_USER} or {DEMO_REVIEWER}, password {DEMO_PASSWORD})")
    table.add_row("the loop: new version",
                  f"{central_url}/models/{VISION_MODEL}/{NEW_VERSION}  (evaluation beside 1.0.0, "
                  "approver, lineage)")
    table.add_row("the loop: labels, dataset",
                  f"{central_url}/review/samples  {central_url}/datasets/{DATASET}/1")
    table.add_row("the loop: audit trail",
                  f"{central_url}/audit  and  .venv/bin/central-sync audit verify -c {central_cfg}")
    table.add_row("the gateway from central",
                  f"{central_url}/devices/{DEVICE}  (configuration line1, clock, log tail; "
                  "Diagnose, Fetch logs, Restart)  and  .venv/bin/central-sync config where "
                  f"-c {central_cfg}")
    table.add_row("central API", f"{central_url}/api/predictions  {central_url}/api/devices")
    table.add_row("operator page (gateway)", f"{agent_url}/  (recommendations: Accept/Reject)")
    table.add_row("central database", str(workdir / "central" / "central.db"))
    table.add_row("gateway buffer", str(workdir / "agent" / "buffer.db"))
    table.add_row("gateway model store", str(workdir / "agent" / "models"))
    table.add_row("configs", f"{central_cfg}\n{agent_cfg}")
    table.add_row("logs", str(workdir / "logs"))
    table.add_row("try", f".venv/bin/central-sync devices -c {central_cfg}")
    console.print(table)


def _print_alert_changes(central_url: str, printed: dict[str, str]) -> None:
    """Alerts that fired or resolved since the last look, as central's rules decided."""
    rows = get_json(f"{central_url}/api/alerts?state=all&limit=20")
    assert isinstance(rows, list)
    for alert in sorted(rows, key=lambda a: a["updated_at"]):
        if printed.get(alert["alert_id"]) == alert["state"]:
            continue
        printed[alert["alert_id"]] = alert["state"]
        clock = time.strftime("%H:%M:%S", time.localtime(alert["updated_at"]))
        word = "[bold yellow]alert fired[/]" if alert["state"] == "firing" else \
            "[green]alert resolved[/]"
        where = " (also on the gateway's operator page)" if alert["operator"] else ""
        console.print(f"  {clock} {word} {alert['rule']}: {alert['summary']}  "
                      f"{central_url}{alert['url']}{where}", highlight=False)


def _new_rows(url: str, seen: set[tuple[str, int]]) -> list[tuple[dict, str]]:
    """Rows of a central records API not printed yet, oldest first, with their local time."""
    rows = get_json(url)
    assert isinstance(rows, list)
    fresh = []
    for row in sorted(rows, key=lambda r: r["seq"]):
        key = (row["device_id"], row["seq"])
        if key not in seen:
            seen.add(key)
            fresh.append((row, time.strftime("%H:%M:%S", time.localtime(row["created_at"]))))
    return fresh


def _follow_predictions(demo: Demo, central_url: str, started: float,
                        duration_s: float | None) -> None:
    console.print("[bold]Predictions, recommendations and defects arriving in central[/] "
                  "(Ctrl-C to stop):")
    seen: set[tuple[str, int]] = set()
    alerts: dict[str, str] = {}  # alert id -> its state when last printed
    first = True
    while duration_s is None or time.monotonic() - started < duration_s:
        for name, process in demo.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}")
        _print_alert_changes(central_url, alerts)
        for row, clock in _new_rows(f"{central_url}/api/records?type=defect&limit=20", seen):
            payload = row["payload"]
            console.print(
                f"  {clock} #{row['seq']:<4} [bold red]defect[/] {payload['label']} "
                f"({payload['confidence']:.2f}) on {payload['camera']}/{payload['roi']}  "
                f"evidence: {central_url}/api/records/{row['device_id']}/{row['seq']}"
                "/images/annotated")
        for row, clock in _new_rows(f"{central_url}/api/records?type=recommendation&limit=20",
                                    seen):
            payload = row["payload"]
            changes = ", ".join(f"{c['tag']} {c['current']:g} → {c['proposed']:g}"
                                for c in payload["changes"])
            console.print(
                f"  {clock} #{row['seq']:<4} [bold cyan]recommendation[/] {changes}: predicted "
                f"{payload['target']} {payload['predicted_now']:.2f} → "
                f"{payload['predicted_after']:.2f} (answer it on the gateway page)")
        rows = get_json(f"{central_url}/api/predictions?limit=20")
        assert isinstance(rows, list)
        for row in sorted(rows, key=lambda r: r["seq"]):
            key = (row["device_id"], row["seq"])
            if key in seen:
                continue
            seen.add(key)
            if first:
                console.print(f"[green]first prediction in central after "
                              f"{time.monotonic() - started:.1f} s[/]")
                first = False
            inputs = row.get("inputs") or {}
            outputs = row.get("outputs") or {}
            scrap = outputs.get("scrap_rate_pct")
            clock = time.strftime("%H:%M:%S", time.localtime(row["created_at"]))
            if scrap is None:
                console.print(f"  {clock} #{row['seq']} (no output)")
                continue
            console.print(
                f"  {clock} #{row['seq']:<4} {row['model_name']} {row['model_version']}  "
                f"zone 2 at {inputs.get('zone2_temp_c', 0):5.1f} °C  "
                f"→ predicted scrap [bold]{scrap:.2f} %[/]"
            )
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "demo",
                        help="where the demo keeps its databases, configs and logs")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop by itself after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo's data")
    args = parser.parse_args(argv)
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(args.workdir.resolve(), args.duration)


if __name__ == "__main__":
    sys.exit(main())
