"""Presentation helpers shared by the CLI tables and the web page."""

from __future__ import annotations

import time

from edge_agent.kernel.contract import ModelRef


def seconds_ago(at: float | None, now: float | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', 'never': ages for people reading fleet views."""
    if at is None:
        return "never"
    age = max(0.0, (time.time() if now is None else now) - at)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{int(age // seconds)} {unit} ago"
    return f"{int(age)} s ago"


def models_text(active_models: list[ModelRef]) -> str:
    """'scrap-model 1.0.0, surface-defects 1.4.0', or '-' when none is active."""
    names = [f"{ref.name} {ref.version}" for ref in active_models]
    return ", ".join(names) or "-"
