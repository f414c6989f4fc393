"""The buffer's default eviction priorities name exactly the record kinds the agent writes."""

from __future__ import annotations

import ast
from pathlib import Path

import edge_agent
from edge_agent.buffer import DEFAULT_KEEP, DEFAULT_PRIORITIES
from edge_agent.kernel import contract
from edge_agent.kernel.contract import RECORD_PAYLOADS

AGENT = Path(edge_agent.__file__).parent


def record_kinds_written_by_the_agent() -> set[str]:
    """Every RECORD_* constant the agent's code outside the kernel names."""
    names = set()
    for path in AGENT.rglob("*.py"):
        if "kernel" in path.relative_to(AGENT).parts:
            continue
        names |= {node.id for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Name) and node.id.startswith("RECORD_")
                  and node.id != "RECORD_PAYLOADS"}
    return {getattr(contract, name) for name in names}


def test_every_default_priority_names_a_record_kind_the_contract_knows() -> None:
    unknown = set(DEFAULT_PRIORITIES) - set(RECORD_PAYLOADS)
    assert unknown == set(), f"priorities for record kinds nothing sends: {unknown}"
    assert set(DEFAULT_KEEP) <= set(RECORD_PAYLOADS)


def test_every_record_kind_the_agent_writes_has_a_priority() -> None:
    written = record_kinds_written_by_the_agent()
    assert written, "the scan found no record kind: it no longer looks where records are made"
    assert written - set(DEFAULT_PRIORITIES) == set()
    assert set(RECORD_PAYLOADS) - set(DEFAULT_PRIORITIES) == set()
