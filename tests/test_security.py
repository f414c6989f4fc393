"""The shipped broker configuration, against a real Mosquitto started from it.

deploy/mosquitto/edge-mlops.conf runs here with only its paths and ports changed (and its
optional mutual-TLS listener switched on). Central's accounts come from `central-sync broker
init` and `central-sync device add`, as on a plant server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from central_sync.db import CentralDB
from tests.conftest import _mosquitto_binary, free_port, wait_for_port
from tests.helpers import REPO, SAMPLE_METADATA, SAMPLE_MODEL, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "edge-mlops.conf"
SHIPPED_ROOT = "/etc/mosquitto/edge-mlops"


def broker_conf(root: Path, plain_port: int, tls_port: int, mtls_port: int) -> str:
    """The shipped configuration with this test's folder and ports, mutual TLS switched on."""
    text = SHIPPED_CONF.read_text()
    assert "listener 1883 127.0.0.1\n" in text and "listener 8883\n" in text
    text = text.replace(SHIPPED_ROOT, str(root))
    text = text.replace("listener 1883 127.0.0.1\n", f"listener {plain_port} 127.0.0.1\n")
    text = text.replace("listener 8883\n", f"listener {tls_port} 127.0.0.1\n")
    head, marker, block = text.partition("#listener 8884\n")
    assert marker, "the optional mutual-TLS listener is missing from the shipped file"
    block = re.sub(r"^#(\w)", r"\1", block, flags=re.MULTILINE)
    return (f"{head}listener {mtls_port} 127.0.0.1\n{block}\n"
            # Only for this test: where Mosquitto keeps its pid and log.
            f"pid_file {root}/mosquitto.pid\n"
            f"log_dest file {root}/mosquitto.log\nlog_type all\n"
            f"{'user root' if os.geteuid() == 0 else ''}\n")


@dataclass
class SecurePlant:
    root: Path
    plain_port: int
    tls_port: int
    mtls_port: int
    central_config: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    broker: subprocess.Popen | None = None

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    def central(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "central-sync"), *args, "-c", str(self.central_config)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        return done

    def ok(self, *args: str) -> str:
        done = self.central(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start_broker(self) -> None:
        conf = self.root / "mosquitto.conf"
        conf.write_text(broker_conf(self.root, self.plain_port, self.tls_port, self.mtls_port))
        self.broker = subprocess.Popen([_mosquitto_binary(), "-c", str(conf)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in (self.plain_port, self.tls_port, self.mtls_port):
            wait_for_port(port)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen([str(BIN / name), *args], stdout=log, stderr=log, cwd=REPO)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def add_device(self, device: str, labels: str = "") -> dict[str, bytes]:
        """Provision `device` with the CLI; the files of its bundle by name."""
        self.ok("device", "add", device, "--labels", labels)
        with tarfile.open(self.root / "bundles" / f"{device}.tar.gz") as bundle:
            return {member.name.split("/", 1)[1]: bundle.extractfile(member).read()  # type: ignore[union-attr]
                    for member in bundle.getmembers() if member.isfile()}

    def probe(self, username: str | None, password: str | None, **kwargs: object) -> Probe:
        kwargs.setdefault("port", self.tls_port)
        kwargs.setdefault("ca", self.tls / "ca.crt")
        return Probe(username=username, password=password, **kwargs)  # type: ignore[arg-type]


def central_yaml(root: Path, plain_port: int, tls_port: int, reload_command: str) -> str:
    return (
        "central_id: central\n"
        f"broker: {{host: 127.0.0.1, port: {plain_port}, username: central,\n"
        "         password_file: central/keys/mqtt-password}\n"
        "database_url: sqlite:///central/central.db\n"
        "artifact_dir: central/artifacts\n"
        "chunk_size_bytes: 16384\n"
        "web: {port: 0}\n"
        "models: {require_approval: false}\n"
        "signing_key_path: central/keys/signing.key\n"
        "provisioning:\n"
        f"  password_file: {root}/passwd\n"
        f"  acl_file: {root}/acl\n"
        f"  reload_command: {reload_command}\n"
        f"  bundle_dir: {root}/bundles\n"
        "  gateway_broker_host: localhost\n"
        f"  gateway_broker_port: {tls_port}\n"
        f"  ca_file: {root}/tls/ca.crt\n"
        f"  client_ca_key: {root}/tls/ca.key\n")


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a plant server has before its first device: the broker's certificates
    (deploy/make-certs.sh), central's signing key (`keys init`) and central's broker account
    in Mosquitto's password file and ACL (`broker init`). Made once; each test's plant starts
    from a copy (no broker runs yet here, so nothing is reloaded)."""
    folder = tmp_path_factory.mktemp("initialised")
    root = folder / "edge-mlops"
    root.mkdir()
    made = subprocess.run(["bash", str(REPO / "deploy" / "make-certs.sh"), "server", "--out",
                           str(root / "tls"), "localhost", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = folder / "central.yaml"
    config.write_text(central_yaml(root, free_port(), free_port(), reload_command="exit 0"))
    template = SecurePlant(root, 0, 0, 0, config)
    template.ok("keys", "init")
    # Mosquitto needs both account files to start; central-sync owns them from then on.
    (root / "passwd").touch()
    (root / "acl").touch()
    template.ok("broker", "init")
    config.unlink()
    return folder


@pytest.fixture
def plant(tmp_path: Path, initialised: Path) -> Iterator[SecurePlant]:
    shutil.copytree(initialised, tmp_path, dirs_exist_ok=True)
    root = tmp_path / "edge-mlops"
    plant = SecurePlant(root, free_port(), free_port(), free_port(), tmp_path / "central.yaml")
    plant.central_config.write_text(central_yaml(
        root, plant.plain_port, plant.tls_port,
        reload_command=f"kill -HUP $(cat {root}/mosquitto.pid)"))
    plant.start_broker()
    yield plant
    for process in [*plant.processes.values(), plant.broker]:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


class Probe:
    """A plain paho client that records what the broker says and what it delivers."""

    def __init__(self, port: int, username: str | None, password: str | None,
                 ca: Path | None = None, use_tls: bool = True, cert: Path | None = None,
                 key: Path | None = None, client_id: str = "", v5: bool = True) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"probe-{os.urandom(4).hex()}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        if use_tls:
            self.client.tls_set(ca_certs=str(ca) if ca else None,
                                certfile=str(cert) if cert else None,
                                keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)
        self.port = port
        self.connack: str | None = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, list[str]] = {}
        self.settled = threading.Event()  # answered or dropped: connect() knows its outcome
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = self._on_ack
        self.client.on_publish = lambda _c, _u, mid, code, _p: self.acks.setdefault(
            mid, [str(code)])

    def _on_connect(self, _client, _userdata, _flags, code, _properties) -> None:
        self.connack = str(code)
        if not code.is_failure:
            self.connected.set()
        self.answered.set()
        self.settled.set()

    def _on_disconnect(self, *_args: object) -> None:
        self.dropped.set()
        self.settled.set()

    def _on_ack(self, _client, _userdata, mid, codes, _properties) -> None:
        self.acks[mid] = [str(c) for c in codes]

    def connect(self, timeout_s: float = 10.0) -> bool:
        """Whether the broker accepted the login (False: refused, or the link failed)."""
        try:
            self.client.connect("localhost", self.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.connack = f"{type(exc).__name__}: {exc}"
            return False
        self.client.loop_start()
        # A broker that drops the link (no TLS, no client certificate) does so without a
        # CONNACK: waiting for either ends the wait as soon as the outcome is known.
        self.settled.wait(timeout_s)
        return self.connected.is_set()

    def subscribe(self, topic: str) -> list[str]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        wait_until(lambda: mid in self.acks, 10, what=f"SUBACK for {topic}")
        return self.acks[mid]

    def publish(self, topic: str, payload: bytes = b"{}") -> list[str]:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.acks or self.dropped.is_set(), 10,
                   what=f"PUBACK for {topic}")
        return self.acks.get(info.mid, ["dropped"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def password_of(bundle: dict[str, bytes]) -> str:
    return bundle["mqtt-password"].decode().strip()


def central_password(plant: SecurePlant) -> str:
    return (plant.central_config.parent / "central" / "keys" / "mqtt-password").read_text().strip()


def test_the_network_listener_needs_tls_and_a_login(plant: SecurePlant) -> None:
    bundle = plant.add_device("line3-gw1")
    password = password_of(bundle)

    plain = plant.probe("line3-gw1", password, use_tls=False)
    assert not plain.connect(timeout_s=3), "plain MQTT was accepted on the TLS listener"
    untrusted = plant.probe("line3-gw1", password, ca=None)  # the system's CAs: not ours
    assert not untrusted.connect() and "CERTIFICATE_VERIFY_FAILED" in (untrusted.connack or "")

    for username, secret in ((None, None), ("line3-gw1", "wrong"), ("nobody", password)):
        refused = plant.probe(username, secret)
        assert not refused.connect(), f"{username}/{secret} was let in"
        assert refused.connack in ("Not authorized", "Bad user name or password"), refused.connack
        refused.close()
    anonymous_local = plant.probe(None, None, port=plant.plain_port, use_tls=False)
    assert not anonymous_local.connect()
    assert anonymous_local.connack == "Not authorized"

    good = plant.probe("line3-gw1", password)
    assert good.connect(), good.connack
    good.close()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_a_device_can_use_only_its_own_topics(plant: SecurePlant, v5: bool) -> None:
    a = plant.probe("gw-a", password_of(plant.add_device("gw-a", "line-1")), v5=v5)
    b = plant.probe("gw-b", password_of(plant.add_device("gw-b", "line-1")), v5=v5)
    central = plant.probe("central", central_password(plant), port=plant.plain_port,
                          use_tls=False, v5=v5)
    for client in (a, b, central):
        assert client.connect(), client.connack
    central.subscribe("edge-mlops/#")
    b.subscribe("edge-mlops/devices/gw-b/commands")
    # A asks for B's commands, every device's uplinks and the whole tree: it gets nothing.
    for topic in ("edge-mlops/devices/gw-b/commands", "edge-mlops/devices/+/uplink",
                  "edge-mlops/#", "$SYS/#"):
        a.subscribe(topic)

    a.publish("edge-mlops/devices/gw-a/uplink", b"from-a")         # its own: allowed
    a.publish("edge-mlops/devices/gw-b/uplink", b"a-as-b")          # as B: refused
    a.publish("edge-mlops/devices/gw-b/status", b"a-as-b-status")
    a.publish("edge-mlops/devices/gw-a/commands", b"a-commands-itself")
    a.publish("edge-mlops/artifacts/" + "0" * 64, b"a-forges-artifact")
    central.publish("edge-mlops/devices/gw-b/commands", b"for-b")
    central.publish("edge-mlops/devices/gw-b/uplink", b"b-uplink-seen-by-central-only")

    wait_until(lambda: (("edge-mlops/devices/gw-b/commands", b"for-b") in b.messages
                        and ("edge-mlops/devices/gw-a/uplink", b"from-a") in central.messages),
               10, what="the allowed messages")
    payloads = {payload for _topic, payload in central.messages}
    assert not payloads & {b"a-as-b", b"a-as-b-status", b"a-commands-itself",
                           b"a-forges-artifact"}, central.messages
    assert a.messages == [], f"device A read what is not addressed to it: {a.messages}"
    if v5:  # MQTT 5 says so: PUBACK "Not authorized" (MQTT 3.1.1 drops silently)
        assert a.publish("edge-mlops/devices/gw-b/uplink") == ["Not authorized"]
    for client in (a, b, central):
        client.close()


def test_a_device_cannot_take_over_another_devices_session(plant: SecurePlant) -> None:
    b = plant.probe("gw-b", password_of(plant.add_device("gw-b")), client_id="gw-b")
    a = plant.probe("gw-a", password_of(plant.add_device("gw-a")), client_id="gw-b")
    assert b.connect(), b.connack
    assert a.connect(), a.connack  # its client id becomes its user name: gw-a
    a.subscribe("edge-mlops/devices/gw-a/commands")
    assert not b.dropped.wait(2), "device A's client id gw-b kicked device B off the broker"
    a.close()
    b.close()


def test_a_removed_device_is_disconnected_and_refused(plant: SecurePlant) -> None:
    password = password_of(plant.add_device("line3-gw1"))
    connected = plant.probe("line3-gw1", password)
    assert connected.connect(), connected.connack

    plant.ok("device", "remove", "line3-gw1")
    assert connected.dropped.wait(10), "the revoked device kept its connection"
    again = plant.probe("line3-gw1", password)
    assert not again.connect()
    listing = plant.ok("device", "list")
    assert "line3-gw1" in listing and "revoked" in listing
    assert not (plant.root / "bundles" / "line3-gw1.tar.gz").exists()
    assert "line3-gw1" not in (plant.root / "passwd").read_text()
    assert "line3-gw1" not in (plant.root / "acl").read_text()

    # Added again, it gets new credentials; the old ones stay dead.
    new_password = password_of(plant.add_device("line3-gw1"))
    assert new_password != password
    assert not plant.probe("line3-gw1", password).connect()
    assert plant.probe("line3-gw1", new_password).connect()


def test_rotation_replaces_the_password(plant: SecurePlant) -> None:
    old = password_of(plant.add_device("line3-gw1"))
    plant.ok("device", "rotate", "line3-gw1")
    with tarfile.open(plant.root / "bundles" / "line3-gw1.tar.gz") as bundle:
        member = bundle.extractfile("line3-gw1/mqtt-password")
        assert member is not None
        new = member.read().decode().strip()
    assert new != old
    assert not plant.probe("line3-gw1", old).connect()
    assert plant.probe("line3-gw1", new).connect()
    refused = plant.central("device", "rotate", "never-added")
    assert refused.returncode == 2 and "not a provisioned device" in refused.stderr


def test_mutual_tls_needs_the_device_certificate(plant: SecurePlant, tmp_path: Path) -> None:
    bundle = plant.add_device("line3-gw1")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(bundle["client.crt"])
    key.write_bytes(bundle["client.key"])
    password = password_of(bundle)
    without = plant.probe("line3-gw1", password, port=plant.mtls_port)
    assert not without.connect(timeout_s=3), "mutual TLS let in a client without a certificate"
    with_cert = plant.probe("line3-gw1", password, port=plant.mtls_port, cert=cert, key=key)
    assert with_cert.connect(), with_cert.connack
    with_cert.close()
    plant.ok("device", "remove", "line3-gw1")  # the certificate alone does not get in
    assert not plant.probe("line3-gw1", password, port=plant.mtls_port, cert=cert,
                           key=key).connect()


def test_central_and_a_provisioned_agent_do_their_jobs_over_tls(plant: SecurePlant) -> None:
    """The bundle as written, on a gateway: status, uplink, a signed deployment, all over TLS."""
    device = "line3-gw1"
    plant.add_device(device, "line-3")
    gateway = plant.root / "gateway"
    with tarfile.open(plant.root / "bundles" / f"{device}.tar.gz") as bundle:
        bundle.extractall(gateway, filter="data")
    config = gateway / device / "edge-agent.yaml"
    assert (gateway / device / "mqtt-password").stat().st_mode & 0o077 == 0
    # The gateway's own folders, which deploy/install-agent.sh makes on a real one.
    text = config.read_text().replace("data_dir: /var/lib/edge-agent", "data_dir: state")
    config.write_text(text + "status_interval_s: 1\nui: {port: 0}\n")
    checked = subprocess.run([str(BIN / "edge-agent"), "check-config", "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    plant.ok("model", "publish", str(SAMPLE_MODEL), "--name", "extruder-scrap",
             "--version", "1.0.0", "--metadata", str(SAMPLE_METADATA))
    plant.start("central-sync", "serve", "-c", str(plant.central_config))
    agent = plant.start("edge-agent", "run", "-c", str(config))
    db = CentralDB(plant.central_config.parent / "central" / "central.db")
    wait_until(lambda: any(d.device_id == device and d.state == "online"
                           for d in db.list_devices()), 30,
               what="the agent online in central: " + plant.log("edge-agent"))
    deployed = plant.central("deploy", "extruder-scrap@1.0.0", "--device", device, "--wait", "90")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + plant.log("edge-agent")
    assert "activated" in deployed.stdout
    wait_until(lambda: db.count_records(device) >= 1, 30, what="the agent's records stored")
    assert "online" in plant.ok("device", "list")

    plant.ok("device", "remove", device)
    wait_until(lambda: "Not authorized" in plant.log("edge-agent")
               or "not authorised" in plant.log("edge-agent").lower(), 30,
               what="the revoked agent refused by the broker")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0


def test_central_can_share_ingest_through_shared_subscriptions(plant: SecurePlant) -> None:
    """Scale-out members subscribe with $share/GROUP/...: the ACL lets central do that. A
    device that joins the group reads nothing through it (Mosquitto checks read access on
    delivery, not at SUBSCRIBE: README, Security)."""
    device = plant.probe("gw-a", password_of(plant.add_device("gw-a")))
    members = [plant.probe("central", central_password(plant), port=plant.plain_port,
                           use_tls=False) for _ in range(2)]
    for client in (device, *members):
        assert client.connect(), client.connack
    for member in members:
        member.subscribe("$share/ingest/edge-mlops/devices/+/uplink")
    for n in range(10):
        device.publish("edge-mlops/devices/gw-a/uplink", f"record-{n}".encode())
    wait_until(lambda: sum(len(m.messages) for m in members) == 10, 10,
               what="every uplink delivered to one member of the group")
    assert all(m.messages for m in members), "the group did not share the messages"

    device.subscribe("$share/ingest/edge-mlops/devices/+/uplink")
    for n in range(10):
        device.publish("edge-mlops/devices/gw-a/uplink", f"late-{n}".encode())
    wait_until(lambda: sum(len(m.messages) for m in members) >= 13, 10,
               what="uplinks still reaching central")
    assert device.messages == []


def test_a_device_reads_its_lines_alerts_and_cannot_forge_them(plant: SecurePlant) -> None:
    a = plant.probe("gw-a", password_of(plant.add_device("gw-a", "line-1")))
    b = plant.probe("gw-b", password_of(plant.add_device("gw-b", "line-1")))
    central = plant.probe("central", central_password(plant), port=plant.plain_port,
                          use_tls=False)
    for client in (a, b, central):
        assert client.connect(), client.connack
    a.subscribe("edge-mlops/devices/gw-a/alerts")
    a.subscribe("edge-mlops/devices/gw-b/alerts")  # another device's: delivers nothing
    b.subscribe("edge-mlops/devices/gw-b/alerts")
    assert a.publish("edge-mlops/devices/gw-a/alerts", b"a-clears-its-alerts") == \
        ["Not authorized"]
    assert a.publish("edge-mlops/devices/gw-b/alerts", b"a-forges-b") == ["Not authorized"]
    central.publish("edge-mlops/devices/gw-a/alerts", b"for-a")
    central.publish("edge-mlops/devices/gw-b/alerts", b"for-b")
    wait_until(lambda: ("edge-mlops/devices/gw-a/alerts", b"for-a") in a.messages
               and ("edge-mlops/devices/gw-b/alerts", b"for-b") in b.messages,
               10, what="central's alerts reaching each device")
    assert a.messages == [("edge-mlops/devices/gw-a/alerts", b"for-a")], a.messages
    assert b.messages == [("edge-mlops/devices/gw-b/alerts", b"for-b")], b.messages
    for client in (a, b, central):
        client.close()
