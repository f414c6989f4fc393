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
    "agent-layers": "The agent in layers: each imports only from layers below it; siblings in "
                    "a layer are independent",
    "central-layers": "Central in layers: each imports only from layers below it; siblings "
                      "in a layer are independent",
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


def kept_and_broken(output: str) -> tuple[set[str], set[str]]:
    """The contracts lint-imports reported KEPT and BROKEN (it folds long names)."""
    text = " ".join(output.split())
    kept = {key for key, name in CONTRACT_NAMES.items() if f"{name} KEPT" in text}
    broken = {key for key, name in CONTRACT_NAMES.items() if f"{name} BROKEN" in text}
    return kept, broken


def test_the_project_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kept_and_broken(result.stdout) == (set(CONTRACT_NAMES), set())


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("edge_agent/kernel/violation.py", "import edge_agent.imaging",
     {"kernel-stands-alone", "agent-layers"}),
    ("edge_agent/kernel/contract/violation.py", "import numpy", {"contract-is-light"}),
    ("central_sync/db/violation.py", "import edge_agent.buffer", {"central-on-kernel"}),
    ("central_sync/db/violation.py", "import central_sync.service",
     {"no-cycles", "central-layers"}),
    ("edge_agent/sources/violation.py", "import edge_agent.pipelines", {"agent-layers"}),
    ("central_sync/web/violation.py", "import central_sync.rollouts", {"central-layers"}),
], ids=["kernel-stands-alone", "contract-is-light", "central-on-kernel", "no-cycles",
        "agent-layers", "central-layers"])
def test_breaking_a_contract_on_purpose_fails_the_linter_naming_it(
        tmp_path: Path, module: str, line: str, broken: set[str]) -> None:
    project = copy_project(tmp_path)
    (project / module).write_text(f'"""Breaks a contract on purpose."""\n\n{line}\n')
    result = lint_imports(project)
    assert result.returncode != 0, result.stdout
    assert kept_and_broken(result.stdout) == (set(CONTRACT_NAMES) - broken, broken), \
        result.stdout + result.stderr
