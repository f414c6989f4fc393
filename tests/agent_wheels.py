"""Real agent release wheels for the update tests: this checkout built with pip as a release
would be, once per test session, under another version (0.1.1), and a broken variant (0.1.2)
whose `python -m edge_agent run` crashes at start."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

GOOD_VERSION = "0.1.1"
BROKEN_VERSION = "0.1.2"
BROKEN_MAIN = ('raise RuntimeError("this release is broken on purpose: it crashes at start")\n')


@dataclass(frozen=True)
class AgentWheels:
    good: Path
    broken: Path
    build_s: float  # both builds together, printed by the fixture


def _source_copy(target: Path, version: str) -> Path:
    """The files a wheel is built from, with `version` in both places that name it."""
    source = target / f"src-{version}"
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("edge_agent", "central_sync"):
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    shutil.copy(REPO / "README.md", source / "README.md")
    project = (REPO / "pyproject.toml").read_text()
    project = re.sub(r'(?m)^version = "[^"]+"$', f'version = "{version}"', project, count=1)
    (source / "pyproject.toml").write_text(project)
    init = source / "edge_agent" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"',
                           init.read_text()))
    return source


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` without dependencies, build isolation or index: nothing is downloaded (the
    environment's setuptools builds it: the dev extra asks for one that can)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--isolated", "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = sorted(out.glob("edge_mlops-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def build_agent_wheels(folder: Path) -> AgentWheels:
    started = time.monotonic()
    good = build_wheel(_source_copy(folder, GOOD_VERSION), folder / "good")
    broken_source = _source_copy(folder, BROKEN_VERSION)
    (broken_source / "edge_agent" / "__main__.py").write_text(BROKEN_MAIN)
    broken = build_wheel(broken_source, folder / "broken")
    return AgentWheels(good, broken, time.monotonic() - started)
