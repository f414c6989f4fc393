"""Installing a real release wheel beside the running environment: offline, checked, and never
touching what runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.kernel.signing import Signer
from edge_agent.updates.installer import BASE_PTH, InstallFailed, install_release
from edge_agent.updates.layout import ReleaseLayout
from tests.agent_wheels import GOOD_VERSION, AgentWheels
from tests.edge_agent.updates.helpers import package_for
from tests.helpers import TEST_VERIFIER


def _site_packages_listing() -> set[str]:
    folder = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}." \
        f"{sys.version_info.minor}" / "site-packages"
    return {path.name for path in folder.iterdir()}


def test_a_release_is_a_new_environment_that_imports_its_own_agent_and_the_running_packages(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    layout = ReleaseLayout(tmp_path)
    package = package_for(agent_wheels.good, requires=[
        *package_for(agent_wheels.good).requires,
        'not-a-package-anywhere>=1; extra == "never-installed"'])  # extras are not needed
    before = _site_packages_listing()
    started = time.monotonic()
    release = install_release(agent_wheels.good, package, layout, TEST_VERIFIER)
    took = time.monotonic() - started
    assert release == layout.release(GOOD_VERSION) and layout.is_installed(release)
    assert (next(release.glob("lib/python*/site-packages")) / BASE_PTH).is_file()
    found = subprocess.run(
        [str(release / "bin" / "python"), "-P", "-c",
         "import edge_agent, onnxruntime, pydantic; print(edge_agent.__version__, "
         "edge_agent.__file__)"], capture_output=True, text=True, check=True, cwd=tmp_path)
    version, location = found.stdout.split()
    assert version == GOOD_VERSION and Path(location).is_relative_to(release)
    assert _site_packages_listing() == before, "the running environment was changed"
    import edge_agent

    assert edge_agent.__version__ != GOOD_VERSION
    print(f"install took {took:.1f} s")
    # The same wheel again: nothing to do.
    assert install_release(agent_wheels.good, package, layout, TEST_VERIFIER) == release


def test_a_missing_dependency_fails_naming_it_and_leaves_no_release_behind(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    layout = ReleaseLayout(tmp_path)
    package = package_for(agent_wheels.good, requires=["numpy>=1.0", "edge-test-missing>=2.0",
                                                       "pydantic>=999"])
    with pytest.raises(InstallFailed) as failed:
        install_release(agent_wheels.good, package, layout, TEST_VERIFIER)
    message = str(failed.value)
    assert "edge-test-missing>=2.0 (not installed)" in message
    assert "pydantic>=999 (" in message and "is installed)" in message
    assert "downloads nothing" in message
    assert not layout.release(GOOD_VERSION).exists()


def test_a_wheel_that_is_not_the_signed_one_is_refused_before_anything_is_installed(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    layout = ReleaseLayout(tmp_path)
    other = package_for(agent_wheels.broken, version=GOOD_VERSION, filename="x-0.1.1.whl")
    with pytest.raises(InstallFailed, match=r"sha256|bytes"):
        install_release(agent_wheels.good, other, layout, TEST_VERIFIER)
    forged = Signer.generate().signed(package_for(agent_wheels.good))
    with pytest.raises(InstallFailed, match=r"key|signature"):
        install_release(agent_wheels.good, forged, layout, TEST_VERIFIER)
    assert not layout.releases.exists() or not any(layout.releases.iterdir())


def test_the_release_running_now_is_never_installed_over(
        tmp_path: Path, agent_wheels: AgentWheels) -> None:
    layout = ReleaseLayout(tmp_path)
    running = layout.release(GOOD_VERSION)
    running.mkdir(parents=True)
    (running / "keep").write_text("running")
    with pytest.raises(InstallFailed, match="running"):
        install_release(agent_wheels.good, package_for(agent_wheels.good), layout,
                        TEST_VERIFIER, running=running)
    assert (running / "keep").read_text() == "running"
