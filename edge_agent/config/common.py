"""What every part of the agent's configuration shares: strict models and valid names."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.kernel.contract import ID_PATTERN

Name = Annotated[str, Field(pattern=ID_PATTERN)]


class StrictModel(BaseModel):
    """A section of the YAML file: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def require_unique(names: list[str], what: str) -> None:
    """ValueError naming the repeated ones, when `names` has duplicates."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(duplicates)}")
