"""Pipeline snapshots as typed Sparkplug metrics, and metrics as protobuf payloads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from edge_agent.pipelines.snapshot import PipelineSnapshot
from edge_agent.sparkplug import sparkplug_b_pb2 as pb

Value = bool | int | float | str | None


class DataType(IntEnum):
    """The Sparkplug B data types this node sends (the spec's numbering)."""

    Int64 = 4
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13


@dataclass(frozen=True)
class Metric:
    name: str
    datatype: DataType
    value: Value  # DateTime: milliseconds since the epoch; None is sent as is_null


def now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: Any) -> int | None:
    return int(float(seconds) * 1000) if isinstance(seconds, int | float) else None


def _model_ref(model: Any) -> str | None:
    if isinstance(model, dict):
        return f"{model.get('name')}:{model.get('version')}"
    return None if model is None else str(model)


def pipeline_metrics(snapshot: PipelineSnapshot) -> list[Metric]:
    """What a SCADA host sees of one pipeline: health, model, and its kind's results."""
    metrics = [
        Metric("Health/State", DataType.String, snapshot.state),
        Metric("Health/Detail", DataType.String, snapshot.detail),
        Metric("Health/Running", DataType.Boolean, snapshot.state == "running"),
        Metric("Model", DataType.String, snapshot.model),
        Metric("Inferences", DataType.Int64, snapshot.inferences),
    ]
    if snapshot.process is not None:
        process = snapshot.process
        prediction = process.last_prediction or {}
        metrics.append(Metric("Prediction/Model", DataType.String,
                              _model_ref(prediction.get("model"))))
        metrics.append(Metric("Prediction/Time", DataType.DateTime,
                              _ms(process.trend[-1].at) if process.trend else None))
        for output, value in sorted((prediction.get("outputs") or {}).items()):
            metrics.append(Metric(f"Prediction/{output}", DataType.Double,
                                  None if value is None else float(value)))
        if process.recommends:
            open_ = process.open_recommendation
            metrics.append(Metric("Recommendation/Open", DataType.Boolean, open_ is not None))
            metrics += [
                Metric("Recommendation/Id", DataType.String, open_.id if open_ else None),
                Metric("Recommendation/Target", DataType.String, open_.target if open_ else None),
                Metric("Recommendation/Predicted Now", DataType.Double,
                       open_.predicted_now if open_ else None),
                Metric("Recommendation/Predicted After", DataType.Double,
                       open_.predicted_after if open_ else None),
            ]
            metrics.append(Metric("Recommendation/Search", DataType.String, process.search))
    if snapshot.vision is not None:
        vision = snapshot.vision
        last = vision.recent_defects[0] if vision.recent_defects else None
        metrics += [
            Metric("Defects", DataType.Int64, vision.defects),
            Metric("Samples", DataType.Int64, vision.samples),
            Metric("Last Defect/Label", DataType.String, last.label if last else None),
            Metric("Last Defect/Region", DataType.String, last.roi if last else None),
            Metric("Last Defect/Confidence", DataType.Float, last.confidence if last else None),
            Metric("Last Defect/Time", DataType.DateTime, _ms(last.at) if last else None),
        ]
    return metrics


def encode(metrics: list[tuple[Metric, int]], seq: int | None, timestamp_ms: int,
           with_names: bool) -> bytes:
    """A Sparkplug B payload of `(metric, alias)` pairs; births carry names, data only aliases."""
    payload = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq
    for metric, alias in metrics:
        entry = payload.metrics.add(alias=alias, timestamp=timestamp_ms,
                                    datatype=int(metric.datatype))
        if with_names:
            entry.name = metric.name
        _set_value(entry, metric)
    return payload.SerializeToString()


def _set_value(entry: Any, metric: Metric) -> None:
    value = metric.value
    if value is None:
        entry.is_null = True
    elif metric.datatype in (DataType.Int64, DataType.DateTime):
        entry.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # the spec's two's complement
    elif metric.datatype is DataType.Float:
        entry.float_value = float(value)
    elif metric.datatype is DataType.Double:
        entry.double_value = float(value)
    elif metric.datatype is DataType.Boolean:
        entry.boolean_value = bool(value)
    else:
        entry.string_value = str(value)


def decode_rebirth(payload: bytes, rebirth_alias: int) -> bool:
    """Whether an NCMD asks for a rebirth; a payload that does not parse asks for nothing."""
    message = pb.Payload()
    try:
        message.ParseFromString(payload)
    except Exception:  # a malformed command from the SCADA side must not stop the node
        return False
    return any((m.name == "Node Control/Rebirth" or (not m.name and m.alias == rebirth_alias))
               and m.WhichOneof("value") == "boolean_value" and m.boolean_value
               for m in message.metrics)
