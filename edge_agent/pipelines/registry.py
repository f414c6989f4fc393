"""Which class runs each kind of pipeline: a new kind is one module in this folder, one entry
here and its model in the configuration's pipeline union."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.config import PipelineConfig
from edge_agent.pipelines.base import Pipeline, PipelineContext
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.pipelines.vision import VisionPipeline

# config's `type` -> builder(config, its source, context); the configuration has checked that
# the source is of the kind the pipeline reads (`source_type`).
PIPELINE_KINDS: dict[str, Callable[[Any, Any, PipelineContext], Pipeline]] = {
    ProcessPipeline.kind: ProcessPipeline.from_source,
    VisionPipeline.kind: VisionPipeline.from_source,
}


def build_pipeline(config: PipelineConfig, source: object,
                   context: PipelineContext) -> Pipeline:
    """The pipeline `config` describes, reading `source`."""
    try:
        build = PIPELINE_KINDS[config.type]
    except KeyError:
        known = ", ".join(sorted(PIPELINE_KINDS))
        raise ValueError(f"pipeline {config.name!r} has type {config.type!r}, which this agent "
                         f"cannot run; known types: {known}") from None
    return build(config, source, context)
