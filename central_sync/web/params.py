"""Path parameters the pages share, bounded so that a hand-made link gets a 422 saying what
is wrong instead of reaching the database with a number it cannot hold."""

from typing import Annotated

from fastapi import Path

from edge_agent.kernel.contract import MAX_SEQ

RecordSeq = Annotated[int, Path(ge=0, le=MAX_SEQ, description="A record's seq on its device")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_SEQ, description="A dataset version's number")]
