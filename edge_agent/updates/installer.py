"""Installing an agent release beside the running one: a new virtual environment under
`<data_dir>/agent/releases/<version>/` that sees the running environment's packages (a .pth
file naming its site-packages, so nothing is downloaded), the signed wheel installed into it
with pip offline and without dependencies, then each of the wheel's requirements checked
inside it. The running release is never touched; a failed install leaves nothing behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.kernel.contract import AgentPackage
from edge_agent.kernel.signing import SignatureError, Verifier
from edge_agent.model_store import SHORT_SHA256, sha256_of_file
from edge_agent.updates.layout import INSTALLED_MARKER, ReleaseLayout, running_environment

log = logging.getLogger(__name__)

VENV_TIMEOUT_S = 120.0
PIP_TIMEOUT_S = 600.0  # a wheel of a few MB on a slow SD card
CHECK_TIMEOUT_S = 120.0
BASE_PTH = "edge_agent_base.pth"  # in the new environment: the running one's site-packages
OUTPUT_LINES = 15  # of a failed step's output, quoted in the reason

# Run by the new environment's Python: are the wheel's requirements met there, and is its
# edge_agent the new release? Prints one JSON object.
_CHECK = r"""
import json, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
wanted = json.load(sys.stdin)
problems = []
for text in wanted["requires"]:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    try:
        have = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        problems.append(f"{text} (not installed)")
        continue
    if not requirement.specifier.contains(have, prereleases=True):
        problems.append(f"{text} ({have} is installed)")
python = ".".join(str(part) for part in sys.version_info[:3])
if wanted["requires_python"] and not SpecifierSet(wanted["requires_python"]).contains(
        python, prereleases=True):
    problems.append(f"Python {wanted['requires_python']} (this is {python})")
import edge_agent
print(json.dumps({"problems": problems, "version": edge_agent.__version__,
                  "location": edge_agent.__file__}))
"""


class InstallFailed(Exception):
    """The release cannot be installed; the message says why and what to do."""


def verify_package(path: Path, package: AgentPackage, verifier: Verifier | None) -> None:
    """InstallFailed unless the file is the wheel central signed for."""
    if verifier is not None:
        try:
            verifier.verify(package, "agent package")
        except SignatureError as exc:
            raise InstallFailed(str(exc)) from None
    size = path.stat().st_size
    if size != package.size_bytes:
        raise InstallFailed(f"downloaded wheel has {size} bytes, the package says "
                            f"{package.size_bytes}; discarded, deploy again to refetch")
    actual = sha256_of_file(path)
    if actual != package.sha256:
        raise InstallFailed(f"downloaded wheel has sha256 {actual[:SHORT_SHA256]}, the package "
                            f"says {package.sha256[:SHORT_SHA256]}; discarded, deploy again to "
                            "refetch")


def install_release(wheel: Path, package: AgentPackage, layout: ReleaseLayout,
                    verifier: Verifier | None, running: Path | None = None) -> Path:
    """The release's environment, installed and checked (or already installed from the same
    wheel); InstallFailed with the reason otherwise. Blocking: run it in a worker thread."""
    verify_package(wheel, package, verifier)
    release = layout.release(package.version)
    protected = {p.resolve() for p in (running or running_environment(),
                                       layout.target(layout.current)) if p is not None}
    if release.resolve() in protected:
        raise InstallFailed(f"release {package.version} is the one running or current here; "
                            "it is not installed again")
    if layout.is_installed(release) and _marker_sha256(release) == package.sha256:
        log.info("agent release already installed version=%s path=%s", package.version, release)
        return release
    layout.prepare()
    shutil.rmtree(release, ignore_errors=True)  # unfinished, or another build: not running
    started = time.monotonic()
    try:
        _create_environment(release, layout)
        _pip_install(release, wheel, package)
        _check_requirements(release, package)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    (release / INSTALLED_MARKER).write_text(json.dumps(
        {"version": package.version, "sha256": package.sha256, "installed_at": time.time()}))
    log.info("agent release installed version=%s path=%s seconds=%.1f", package.version,
             release, time.monotonic() - started)
    return release


def _marker_sha256(release: Path) -> str | None:
    try:
        return str(json.loads((release / INSTALLED_MARKER).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _create_environment(release: Path, layout: ReleaseLayout) -> None:
    """A virtual environment without pip of its own: it sees the running environment's
    packages (pip among them) through a .pth file, so the dependencies need no download."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(release)], VENV_TIMEOUT_S,
         "creating the virtual environment")
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = release / "lib" / python / "site-packages"
    site_packages.mkdir(parents=True, exist_ok=True)
    paths = running_site_packages(layout)
    (site_packages / BASE_PTH).write_text("".join(f"{path}\n" for path in paths))


def running_site_packages(layout: ReleaseLayout) -> list[str]:
    """This interpreter's site-packages folders, other releases' left out: a release's own
    folder holds only its edge_agent, and releases may be removed."""
    releases = layout.releases.resolve()
    found = []
    for entry in sys.path:
        path = Path(entry)
        if path.name not in ("site-packages", "dist-packages") or not path.is_dir():
            continue
        if path.resolve().is_relative_to(releases) or str(path) in found:
            continue
        found.append(str(path))
    return found


def _pip_install(release: Path, wheel: Path, package: AgentPackage) -> None:
    """The wheel into the new environment: offline, no dependencies, nothing of the running
    environment uninstalled (`--ignore-installed`), no pip configuration read."""
    with tempfile.TemporaryDirectory(dir=wheel.parent, prefix=".wheel-") as folder:
        named = Path(folder) / package.filename  # pip reads name and version from it
        try:
            os.link(wheel, named)
        except OSError:
            shutil.copyfile(wheel, named)
        _run([str(release / "bin" / "python"), "-P", "-m", "pip", "install", "--isolated",
              "--no-deps", "--no-index", "--ignore-installed", "--no-warn-script-location",
              "--disable-pip-version-check", "--quiet", str(named)], PIP_TIMEOUT_S,
             f"installing {package.filename}", cwd=release)


def _check_requirements(release: Path, package: AgentPackage) -> None:
    wanted = json.dumps({"requires": package.requires,
                         "requires_python": package.requires_python})
    output = _run([str(release / "bin" / "python"), "-P", "-c", _CHECK], CHECK_TIMEOUT_S,
                  "checking the requirements", cwd=release, stdin=wanted)
    try:
        found = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InstallFailed(f"checking the requirements of {package.version} printed no "
                            f"answer: {output[-500:]!r}") from None
    if found["problems"]:
        raise InstallFailed(
            f"release {package.version} needs {'; '.join(found['problems'])}, not available "
            "in the running environment; the gateway downloads nothing: install the "
            f"dependencies into {running_environment()} first (deploy/locks/agent.txt), then "
            "deploy again")
    location = Path(found["location"]).resolve()
    if found["version"] != package.version or not location.is_relative_to(release.resolve()):
        raise InstallFailed(f"the installed wheel says edge_agent {found['version']} at "
                            f"{location}, the package {package.version}; publish a wheel built "
                            "from the version it names")


def _run(command: list[str], timeout_s: float, what: str, cwd: Path | None = None,
         stdin: str | None = None) -> str:
    """stdout of the command, or InstallFailed quoting the end of its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              timeout=timeout_s, cwd=cwd, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise InstallFailed(f"{what} took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise InstallFailed(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-OUTPUT_LINES:])
        raise InstallFailed(f"{what} failed (exit status {done.returncode}): {tail}")
    return done.stdout
