"""What pipelines need of their sources, as protocols: pipelines read tags and frames without
depending on how a source gets them (OPC-UA, a camera, a test's dictionary)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from edge_agent.config import CameraSourceConfig, OpcUaSourceConfig
from edge_agent.kernel.contract import SourceState


class TagReading(Protocol):
    """One value of a tag as the source received it."""

    @property
    def value(self) -> float | None: ...
    @property
    def good(self) -> bool: ...
    @property
    def received_at(self) -> float: ...
    @property
    def status(self) -> str: ...


class TagSource(Protocol):
    """A source of tag values: the latest of each, their recent history, and a setpoint write."""

    @property
    def config(self) -> OpcUaSourceConfig: ...
    @property
    def latest(self) -> Mapping[str, TagReading]: ...
    @property
    def history(self) -> Mapping[str, Sequence[TagReading]]: ...
    @property
    def confirmed_at(self) -> float:
        """When the server was last heard from: a steady value is that fresh."""

    async def write(self, tag: str, value: float) -> float | None:
        """Write a setpoint; returns the value it replaced."""


class Frame(Protocol):
    """One decoded frame (BGR), its number in its source and when it was grabbed."""

    @property
    def index(self) -> int: ...
    @property
    def image(self) -> np.ndarray: ...
    @property
    def grabbed_at(self) -> float: ...


class FrameSource(Protocol):
    """A camera: its newest frame, its regions of interest and its state."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> CameraSourceConfig: ...
    @property
    def state(self) -> SourceState: ...

    async def next_frame(self, after: int = -1, timeout_s: float | None = None) -> Frame | None:
        """A frame newer than `after`, or None when none came within `timeout_s`."""
