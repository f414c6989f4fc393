"""The code stays easy to read: no source file over 500 lines, no function over 80.

A file that grows past that is usually two responsibilities; a function that long, several
steps that want names. Tests are exempt (a scenario may read best in one piece).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("edge_agent", "central_sync", "deploy", "sample_data")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def source_files() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_source_is_where_it_is_looked_for() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in source_files()}
    assert "edge_agent/kernel/contract/codec.py" in names
    assert "central_sync/cli/common.py" in names


def test_no_source_file_is_over_500_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): n for p in source_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert long == {}, f"split these by responsibility: {long}"


def test_no_function_is_over_80_lines() -> None:
    long = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = length
    assert long == {}, f"split these into named steps: {long}"
