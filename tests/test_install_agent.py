"""deploy/install-agent.sh, staged with --root into a temp folder from a hand-made bundle."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO, TEST_SIGNER, write_test_keys

SCRIPT = REPO / "deploy" / "install-agent.sh"
VENV = Path(sys.executable).parent.parent  # the project's environment, which has edge-agent
DEVICE = "line3-gw1"


def agent_yaml(labels: str = "line-3") -> str:
    """edge-agent.yaml as `central-sync device add` writes it into a bundle."""
    return f"""# edge-agent configuration for {DEVICE}, from `central-sync device add`.
device_id: {DEVICE}
labels: [{labels}]
data_dir: /var/lib/edge-agent

broker:
  host: mqtt.plant.example
  port: 8883
  tls: true
  ca_file: ca.crt
  username: {DEVICE}
  password_file: mqtt-password
  topic_prefix: edge-mlops

security:
  verify_signatures: true
  central_public_key: central-signing.pub

sources: []
pipelines: []
"""


def ca_certificate_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-mlops plant CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def make_bundle(folder: Path, password: str = "first-password", yaml_text: str | None = None,
                leave_out: str = "", extra: tarfile.TarInfo | None = None) -> Path:
    """DEVICE.tar.gz with the layout central writes: DEVICE/ and its files."""
    _, public = write_test_keys(folder)
    files = {
        "edge-agent.yaml": ((yaml_text or agent_yaml()).encode(), 0o640),
        "ca.crt": (ca_certificate_pem(), 0o644),
        "central-signing.pub": (public.read_bytes(), 0o644),
        "mqtt-password": (password.encode() + b"\n", 0o600),
    }
    target = folder / f"{DEVICE}.tar.gz"
    with tarfile.open(target, "w:gz") as archive:
        directory = tarfile.TarInfo(DEVICE)
        directory.type, directory.mode = tarfile.DIRTYPE, 0o750
        archive.addfile(directory)
        for name, (data, mode) in files.items():
            if name == leave_out:
                continue
            info = tarfile.TarInfo(f"{DEVICE}/{name}")
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
        if extra is not None:
            archive.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return target


def install(bundle: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(bundle), "--root", str(root), "--venv", str(VENV),
         "--no-start", *extra], capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under root: its mode and, for files, a hash of its content."""
    return {str(p.relative_to(root)): (mode(p), hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_installs_config_credentials_state_and_unit_with_their_modes(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    root = tmp_path / "root"
    done = install(bundle, root)
    assert done.returncode == 0, done.stdout + done.stderr
    etc = root / "etc" / "edge-agent"
    assert mode(etc) == 0o750
    for name in ("edge-agent.yaml", "ca.crt", "central-signing.pub", "mqtt-password"):
        assert mode(etc / name) == 0o640, name
    assert (etc / "mqtt-password").read_text() == "first-password\n"
    assert not (etc / "edge-agent.yaml.new").exists()
    state = root / "var" / "lib" / "edge-agent"
    assert state.is_dir() and mode(state) == 0o750
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert mode(unit) == 0o644
    shipped = (REPO / "deploy" / "systemd" / "edge-agent.service").read_text()
    assert unit.read_text() == shipped.replace(
        "ExecStart=/opt/edge-agent/bin/edge-agent ", f"ExecStart={VENV}/bin/edge-agent ")
    # Staged: the state goes to the staging tree; nothing else in the file changes.
    assert (etc / "edge-agent.yaml").read_text() == agent_yaml().replace(
        "data_dir: /var/lib/edge-agent", f"data_dir: {state}")
    assert f"wrote {etc}/edge-agent.yaml" in done.stdout


def test_installed_config_passes_check_config_with_the_staged_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install(make_bundle(tmp_path), root)
    assert done.returncode == 0, done.stdout + done.stderr
    config = root / "etc" / "edge-agent" / "edge-agent.yaml"
    checked = subprocess.run([str(VENV / "bin" / "edge-agent"), "check-config", "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"data dir:  {root}/var/lib/edge-agent" in checked.stdout
    assert "broker:    mqtt.plant.example:8883" in checked.stdout
    assert f"signed by key {TEST_SIGNER.key_id} only" in checked.stdout
    assert f"{config}: OK" in done.stdout  # the script ran the same check


def test_second_run_changes_nothing_and_a_changed_config_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path)
    assert install(bundle, root).returncode == 0
    first = tree(root)
    again = install(bundle, root)
    assert again.returncode == 0, again.stderr
    assert tree(root) == first
    assert "is the bundle's, unchanged" in again.stdout

    etc = root / "etc" / "edge-agent"
    engineers = (etc / "edge-agent.yaml").read_text().replace("[line-3]", "[line-3, extruders]")
    (etc / "edge-agent.yaml").write_text(engineers)
    rotated = make_bundle(tmp_path, password="rotated-password")
    done = install(rotated, root)
    assert done.returncode == 0, done.stderr
    assert (etc / "edge-agent.yaml").read_text() == engineers
    assert (etc / "edge-agent.yaml.new").read_text() == agent_yaml().replace(
        "data_dir: /var/lib/edge-agent", f"data_dir: {root}/var/lib/edge-agent")
    assert mode(etc / "edge-agent.yaml.new") == 0o640
    assert (etc / "mqtt-password").read_text() == "rotated-password\n"  # always updated
    assert "kept your" in done.stdout and "edge-agent.yaml.new" in done.stdout


def test_a_bundle_config_that_does_not_pass_stops_the_install(tmp_path: Path) -> None:
    broken = agent_yaml().replace("sources: []", "sources: []\nui: {port: -1}")
    done = install(make_bundle(tmp_path, yaml_text=broken), tmp_path / "root")
    assert done.returncode == 1
    assert "ui.port" in done.stderr and "does not pass" in done.stderr
    assert "nothing was started" in done.stderr


@pytest.mark.parametrize("problem, expected", [
    ("missing", "not found; make it on central with `central-sync device add DEVICE`"),
    ("not-a-tarball", "is not a .tar.gz archive"),
    ("no-password", f"lacks {DEVICE}/mqtt-password"),
    ("escapes", "outside line3-gw1/; refusing it"),
    ("symlink", "not a plain file or folder; refusing it"),
])
def test_missing_or_malformed_bundles_are_refused_before_anything_is_installed(
        tmp_path: Path, problem: str, expected: str) -> None:
    if problem == "missing":
        bundle = tmp_path / "nothing.tar.gz"
    elif problem == "not-a-tarball":
        bundle = tmp_path / f"{DEVICE}.tar.gz"
        bundle.write_text("device_id: line3-gw1\n")
    elif problem == "no-password":
        bundle = make_bundle(tmp_path, leave_out="mqtt-password")
    elif problem == "escapes":
        outside = tarfile.TarInfo(f"{DEVICE}/../../etc/cron.d/evil")
        outside.size = 1
        bundle = make_bundle(tmp_path, extra=outside)
    else:
        link = tarfile.TarInfo(f"{DEVICE}/shadow")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        bundle = make_bundle(tmp_path, extra=link)
    root = tmp_path / "root"
    done = install(bundle, root)
    assert done.returncode == 1, done.stdout
    assert expected in done.stderr
    assert not (root / "etc").exists()


def test_without_root_or_dash_dash_root_it_asks_for_sudo(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    # A copy another user can read: a fresh clone or pytest's folders may be owner-only.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        (Path(folder) / "deploy").mkdir(mode=0o755)
        script = Path(folder) / "deploy" / SCRIPT.name
        shutil.copy(SCRIPT, script)
        script.chmod(0o644)
        command = ["bash", str(script), str(bundle), "--no-start"]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.fail("running as root without setpriv (util-linux) to drop to nobody")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "run as root, e.g. sudo" in done.stderr and "--root DIR" in done.stderr


def test_help_names_every_option_with_examples() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for text in ("--root DIR", "--venv PATH", "--no-start", "Examples:",
                 "sudo deploy/install-agent.sh line3-gw1.tar.gz", "edge-agent.yaml.new"):
        assert text in done.stdout
    unknown = subprocess.run(["bash", str(SCRIPT), "x.tar.gz", "--force"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown option --force" in unknown.stderr
