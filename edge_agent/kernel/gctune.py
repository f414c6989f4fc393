"""Garbage-collector settings for the long-running processes (agent and central).

Decoding one uplink batch creates tens of thousands of small objects, none of them cyclic.
With CPython's default thresholds (a collection every 700 allocations) that work triggers
collections that rescan everything imported at startup, which cost as much as the decoding
itself. Freezing the startup objects and collecting less often removes that cost; cyclic
garbage is still collected, only in larger steps.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_for_service() -> None:
    """Call once after startup imports, before the service's main loop."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
