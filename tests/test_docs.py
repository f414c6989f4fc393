"""The README stays true: the topic table is the contract's, every command is documented."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest
import yaml

from central_sync.cli import build_parser as central_parser
from edge_agent.cli import _parser as agent_parser
from edge_agent.kernel.contract import topic_table_markdown
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def commands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                nested = list(commands(sub, full))
                yield from nested or [full]


def test_readme_topic_table_is_the_contract() -> None:
    block = re.search(r"<!-- topic-table:start -->\n(.*?)\n<!-- topic-table:end -->", README,
                      re.DOTALL)
    assert block, "README lost its topic table markers"
    assert block.group(1) == topic_table_markdown(), (
        "README topic table is stale: paste `central-sync contract` output between the markers")


@pytest.mark.parametrize(
    "command",
    [*commands(agent_parser(), "edge-agent"), *commands(central_parser(), "central-sync")],
)
def test_every_command_is_documented_in_the_readme(command: str) -> None:
    assert f"`{command}" in README, f"{command} is not documented in README.md"


@pytest.mark.parametrize("command", [["run"], ["check-config"], ["status"], []])
def test_every_agent_command_has_help_with_examples(command: list[str], capsys) -> None:
    from edge_agent.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_readme_configuration_walkthrough_passes_centrals_check() -> None:
    from edge_agent.config.remote import check_remote_body

    section = README[README.index("## Change a line's configuration"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "the configuration walkthrough lost its YAML example"
    check_remote_body(yaml.safe_load(block.group(1)))
