"""What the operator page shows: tags, values, recommendations, trends, defects and health,
as words and numbers ready to print."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from edge_agent.config import UiConfig
from edge_agent.kernel.contract import RecommendationPayload
from edge_agent.pipelines.snapshot import RECENT_DEFECTS, PipelineSnapshot, ProcessDetails

_UNITS = {"c": "°C", "pct": "%", "rpm": "rpm", "bar": "bar", "s": "s", "mm": "mm", "kg": "kg",
          "kgh": "kg/h", "ms": "ms", "a": "A", "v": "V", "kw": "kW", "hz": "Hz"}
_GOOD = {"connected", "running", "online"}
_BAD = {"failed", "error", "stopped", "offline"}
CHART_WIDTH, CHART_HEIGHT, CHART_POINTS = 600, 150, 240


def tag_words(tag: str, names: dict[str, str]) -> tuple[str, str]:
    """(words, unit) for a tag: `zone2_temp_c` -> ('Zone 2 temperature', '°C')."""
    parts = tag.split("_")
    unit = _UNITS.get(parts[-1].lower(), "") if len(parts) > 1 else ""
    if tag in names:
        return names[tag], unit
    words = parts[:-1] if unit else parts
    text = " ".join(re.sub(r"([a-z])(\d)", r"\1 \2", w) for w in words)
    text = re.sub(r"\btemp\b", "temperature", text)
    return text[:1].upper() + text[1:], unit


def number(value: float | None) -> str:
    """A value as people read it off a screen: 182, 61.5, 4.1, 0.25."""
    if value is None:
        return "–"
    digits = 1 if abs(value) >= 1 else 2  # setpoints move in half steps: 186.5 stays 186.5
    text = f"{value:.{digits}f}"
    return text[:-2] if text.endswith(".0") else text


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def with_unit(value: float | None, unit: str) -> str:
    return f"{number(value)} {unit}".strip()


def recommendation_card(rec: RecommendationPayload, names: dict[str, str],
                        now: float) -> dict[str, Any]:
    """The words of one recommendation: each change, the predicted effect, model and times."""
    changes = []
    for change in rec.changes:
        words, unit = tag_words(change.tag, names)
        unit = change.unit or unit
        changes.append({"what": words, "now": with_unit(change.current, unit),
                        "proposed": with_unit(change.proposed, unit)})
    target, unit = tag_words(rec.target, names)
    unit = rec.unit or unit
    left = rec.expires_at - now
    return {
        "id": rec.id, "pipeline": rec.pipeline, "changes": changes,
        "effect": {"what": f"Predicted {target[:1].lower()}{target[1:]}",
                   "now": with_unit(rec.predicted_now, unit),
                   "after": with_unit(rec.predicted_after, unit),
                   "better": _better(rec)},
        "model": f"{rec.model.name} {rec.model.version}",
        "age": f"offered {duration(now - rec.created_at)} ago",
        "expiry": f"expires in {duration(left)}" if left > 0 else "expired",
        "expired": left <= 0,
    }


def _better(rec: RecommendationPayload) -> bool:
    if rec.objective.lower().startswith("max"):
        return rec.predicted_after > rec.predicted_now
    return rec.predicted_after < rec.predicted_now


def chart(title: str, unit: str, points: list[tuple[float, float]]) -> dict[str, Any]:
    """An inline SVG polyline of (time, value) points, scaled to the box."""
    if len(points) > CHART_POINTS:
        step = len(points) / CHART_POINTS
        points = [points[int(i * step)] for i in range(CHART_POINTS)] + [points[-1]]
    values = [v for _, v in points]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span_v = (high - low) or max(abs(high), 1.0) * 0.01
    first, last = (points[0][0], points[-1][0]) if points else (0.0, 1.0)
    span_t = (last - first) or 1.0
    pad = 8
    line = " ".join(
        f"{pad + (t - first) / span_t * (CHART_WIDTH - 2 * pad):.1f},"
        f"{CHART_HEIGHT - pad - (v - low) / span_v * (CHART_HEIGHT - 2 * pad):.1f}"
        for t, v in points)
    return {"title": title, "latest": with_unit(values[-1] if values else None, unit),
            "low": with_unit(low if values else None, unit),
            "high": with_unit(high if values else None, unit),
            "minutes": round(span_t / 60) if len(points) > 1 else 0,
            "line": line, "width": CHART_WIDTH, "height": CHART_HEIGHT}


def process_view(name: str, process: ProcessDetails, ui: UiConfig,
                 now: float) -> dict[str, Any]:
    """A process pipeline's part of the page: its open recommendation and its trend charts."""
    trend = process.trend
    charts = []
    if trend:
        output = next(iter(trend[-1].outputs), None)
        if output is not None:
            words, unit = tag_words(output, ui.tag_names)
            charts.append(chart(f"Predicted {words[:1].lower()}{words[1:]}", unit, [
                (p.at, v) for p in trend if (v := p.outputs.get(output)) is not None]))
        for tag in _trend_tags(process, ui):
            words, unit = tag_words(tag, ui.tag_names)
            points = [(p.at, p.inputs[tag]) for p in trend if tag in p.inputs]
            if points:
                charts.append(chart(words, unit, points))
    last = process.answered[0] if process.answered else None
    return {
        "name": name,
        "card": (recommendation_card(process.open_recommendation, ui.tag_names, now)
                 if process.open_recommendation is not None else None),
        "recommends": process.recommends,
        "last_answer": None if last is None else {
            "decision": last.answer.decision, "by": last.answer.by,
            "ago": duration(now - last.answer.at)},
        "charts": charts,
    }


TREND_TAGS_BY_DEFAULT = 4  # inputs charted when no recommendation names the tags that matter


def _trend_tags(process: ProcessDetails, ui: UiConfig) -> list[str]:
    if ui.trend_tags is not None:
        return ui.trend_tags
    if process.open_recommendation is not None:
        return [c.tag for c in process.open_recommendation.changes]
    if process.answered:
        return [c.tag for c in process.answered[0].recommendation.changes]
    return list(process.trend[-1].inputs)[:TREND_TAGS_BY_DEFAULT]


def health_item(what: str, name: str, state: str, detail: str) -> dict[str, str]:
    level = "good" if state in _GOOD else "bad" if state in _BAD else "warn"
    return {"what": what, "name": name, "state": state.replace("_", " ").capitalize(),
            "detail": detail, "level": level}


BUFFER_WARN_PCT, BUFFER_BAD_PCT = 50, 90  # share of the quota used: eviction draws near
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
ALERTS_SHOWN = 4  # the band stays a band: the rest are counted, and listed on central


def alert_band(alerts: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The line's open alerts as the band atop the page: most severe, then newest, first."""
    ordered = sorted(alerts, key=lambda a: (_SEVERITY_RANK.get(a["severity"], 3),
                                            -a["fired_at"]))
    return [{"id": a["alert_id"], "severity": a["severity"], "summary": a["summary"],
             "since": time.strftime("%H:%M", time.localtime(a["fired_at"])),
             "ago": duration(now - a["fired_at"]), "acked": a["acked"]} for a in ordered]



def operator_view(status: dict[str, Any], pipelines: Sequence[PipelineSnapshot], ui: UiConfig,
                  now: float) -> dict[str, Any]:
    """Everything the templates show, as words and numbers ready to print."""
    device = status["device"]
    buffer = device.get("buffer") or {}
    uplink = device.get("uplink") or {}
    connected = bool(uplink.get("connected"))
    quota = buffer.get("quota_bytes") or 0
    used_pct = 100 * buffer.get("bytes_used", 0) / quota if quota else 0.0
    oldest = buffer.get("oldest_age_s")
    health = [health_item("Source", name, s["state"], s["detail"])
              for name, s in device["sources"].items()]
    health += [health_item("Pipeline", p["name"], p["state"], p["detail"])
               for p in status["pipelines"]]
    process = [process_view(p.name, p.process, ui, now) for p in pipelines
               if p.process is not None]
    defects = [{"pipeline": p.name, "number": d.number, "label": d.label, "roi": d.roi,
                "confidence": round(100 * d.confidence), "ago": duration(now - d.at), "at": d.at}
               for p in pipelines if p.vision is not None
               for d in p.vision.recent_defects[:RECENT_DEFECTS]]
    defects.sort(key=lambda d: -d["at"])
    return {
        "device_id": device["device_id"],
        "clock": time.strftime("%H:%M:%S", time.localtime(now)),
        "uplink": {"connected": connected,
                   "words": "Connected to central" if connected else "Not connected to central",
                   "round_trip": (f"{uplink['round_trip_ms']:.0f} ms round trip"
                                  if uplink.get("round_trip_ms") is not None else "")},
        "buffer": {"depth": buffer.get("depth", 0),
                   "oldest": duration(oldest) if oldest is not None else "",
                   "used_pct": round(used_pct), "evicted": buffer.get("evicted", 0),
                   "level": "bad" if used_pct > BUFFER_BAD_PCT else
                   "warn" if used_pct > BUFFER_WARN_PCT or buffer.get("evicted") else "good"},
        "models": [f"{m['name']} {m['version']}" for m in device["active_models"]],
        "health": health,
        "process": process,
        "has_vision": any(p["type"] == "vision" for p in status["pipelines"]),
        "defects": defects[:RECENT_DEFECTS],
        "alerts": alert_band(status.get("alerts", []), now),
        "alerts_shown": ALERTS_SHOWN,
    }
