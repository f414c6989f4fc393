"""The import-linter contracts in pyproject.toml hold, and each one fails when broken on purpose.

A copy of both packages gets one import that breaks one contract; lint-imports, run on the copy
with the project's own contract file, must then fail and name that contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_NAMES = {
    "kernel-stands-alone": "The kernel imports no other module of the project",
    "contract-is-light": "The wire contract imports only pydantic and the standard library",
    "central-on-kernel": "Central imports from the agent only its kernel",
    "no-cycles": "No import cycles between sibling modules, in either program",
}


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project)}  # the copy, ahead of the installed tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def copy_project(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "templates", "static")
    for package in ("edge_agent", "central_sync"):
        shutil.copytree(ROOT / package, target / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_the_project_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACT_NAMES.values():
        assert f"{name} KEPT" in result.stdout


@pytest.mark.parametrize(("contract", "module", "line"), [
    ("kernel-stands-alone", "edge_agent/kernel/violation.py", "import edge_agent.imaging\n"),
    ("contract-is-light", "edge_agent/kernel/contract/violation.py", "import numpy\n"),
    ("central-on-kernel", "central_sync/violation.py", "import edge_agent.buffer\n"),
    ("no-cycles", "central_sync/db/violation.py", "import central_sync.service\n"),
])
def test_breaking_a_contract_on_purpose_fails_the_linter_naming_it(
        tmp_path: Path, contract: str, module: str, line: str) -> None:
    project = copy_project(tmp_path)
    (project / module).write_text(f'"""Breaks {contract} on purpose."""\n\n{line}')
    result = lint_imports(project)
    assert result.returncode != 0, result.stdout
    assert f"{CONTRACT_NAMES[contract]} BROKEN" in result.stdout, result.stdout + result.stderr
    others = set(CONTRACT_NAMES) - {contract}
    if contract != "no-cycles":  # a planted cycle may break layering too; the others must not
        assert all(f"{CONTRACT_NAMES[o]} KEPT" in result.stdout for o in others), result.stdout
