"""What the service installs is pinned: dependency locks with hashes, images by digest.

The install scripts and the Dockerfile install every dependency from a lock file with
`--require-hashes` (a file changed on the index after locking stops the install), then this
package alone without dependencies. Base images are named by digest, not by a tag that moves.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import REPO

LOCKS = REPO / "deploy" / "locks"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def locked(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) of a lock file; fails on any unpinned entry."""
    entries: dict[str, tuple[Version, int]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^;\s]+)", requirement.split(";")[0])
        assert match, f"{path.name}: {requirement!r} is not pinned with =="
        hashes = [option for option in options if HASH.fullmatch(option)]
        assert hashes, f"{path.name}: {requirement} has no --hash=sha256:..."
        name = canonicalize_name(match.group(1))
        entries[name] = (Version(match.group(2)), len(hashes))
    return entries


def wanted(extra: str | None) -> list[Requirement]:
    requirements = [Requirement(text) for text in PROJECT["project"]["dependencies"]]
    if extra:
        requirements += [Requirement(text)
                         for text in PROJECT["project"]["optional-dependencies"][extra]]
    requirements += [Requirement(text) for text in PROJECT["build-system"]["requires"]]
    return requirements


@pytest.mark.parametrize(("lock", "extra"), [("agent.txt", None), ("central.txt", "postgres"),
                                             ("central.txt", "training")])
def test_lock_pins_every_dependency_with_hashes_within_pyproject_bounds(
        lock: str, extra: str | None) -> None:
    entries = locked(LOCKS / lock)
    for requirement in wanted(extra):
        name = canonicalize_name(requirement.name)
        assert name in entries, (f"{lock} lacks {requirement.name}: run bash deploy/lock.sh "
                                 "after changing pyproject.toml")
        version, _hashes = entries[name]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{lock}: {name}=={version} is outside pyproject.toml's {requirement}"


@pytest.mark.parametrize(("script", "lock"), [("install-agent.sh", "agent.txt"),
                                              ("install-central.sh", "central.txt")])
def test_install_scripts_install_dependencies_only_from_the_lock(script: str, lock: str) -> None:
    text = re.sub(r"\\\n\s*", " ", (REPO / "deploy" / script).read_text())
    commands = [line.strip() for line in text.splitlines()
                if re.match(r'\s*"\$venv/bin/python" -m pip install\b', line)]
    assert commands, f"{script} installs nothing with pip"
    from_lock, package = commands
    assert "--require-hashes" in from_lock and f"deploy/locks/{lock}" in from_lock
    assert "--no-deps" in package and "--no-build-isolation" in package, \
        "the package itself must bring no unlocked dependency nor build tool"


def test_dockerfile_installs_from_the_lock_before_the_package_and_pins_its_base() -> None:
    text = re.sub(r"\\\n\s*", " ", (REPO / "deploy" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.startswith("#")]
    (base,) = [line.split("=", 1)[1] for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    assert DIGEST.search(base), f"the base image {base} is not pinned by digest"
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "${PYTHON_IMAGE}" for image in froms)
    runs = [line for line in lines if line.startswith("RUN ") and "pip install" in line]
    assert "--require-hashes -r central.lock" in runs[0]
    assert "--no-deps --no-build-isolation" in runs[1]
    copied_lock = lines.index("COPY deploy/locks/central.txt ./central.lock")
    assert copied_lock < lines.index(runs[0])


def test_compose_images_are_pinned_by_digest() -> None:
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        if "build" in service:
            continue  # central: built from the Dockerfile above
        assert DIGEST.search(service["image"]), f"service {name}: {service['image']} is a tag"


def test_lock_script_and_pin_script_explain_themselves() -> None:
    import subprocess

    for script in ("lock.sh", "pin-images.sh"):
        shown = subprocess.run(["bash", str(REPO / "deploy" / script), "--help"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert "Usage:" in shown and "Examples:" in shown
