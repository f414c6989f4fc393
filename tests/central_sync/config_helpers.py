"""Configuration bodies for central's tests: what a line's gateways run, as central sends it."""

from __future__ import annotations

import copy
from typing import Any

import yaml

LINE_BODY: dict[str, Any] = {
    "sources": [{"name": "line1", "type": "opcua",
                 "endpoint": "opc.tcp://127.0.0.1:4840/line-1",
                 "nodes": {"zone2_temp_c": "ns=2;s=line1.zone2_temp_c"}}],
    "pipelines": [{"name": "scrap", "type": "process", "source": "line1",
                   "model": "extruder-scrap", "interval_s": 5}],
}


def line_body(interval_s: float = 5) -> dict[str, Any]:
    """The line's body with the scrap pipeline's interval set: each value is another version."""
    body = copy.deepcopy(LINE_BODY)
    body["pipelines"][0]["interval_s"] = interval_s
    return body


def body_yaml(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False)
