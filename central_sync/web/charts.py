"""Charts as inline SVG, drawn on the server: no script, no internet, readable as they print."""

import time
from html import escape
from typing import Any

from markupsafe import Markup

from central_sync.drift import PSI_DRIFT, latency_percentiles

CLASS_COLOURS = ("#2563eb", "#d97706", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#4b5563")


def psi_chart(drift: list[dict[str, Any]], width: int = 520) -> Markup:
    """Horizontal bars of each value's PSI, the drift threshold as a line; red when drifted."""
    rows = [d for d in drift if d["psi"] is not None]
    if not rows:
        return Markup("<p>No referenced values reported.</p>")
    label_w, bar_h, top = 170, 22, 18
    scale_max = max(PSI_DRIFT * 2, *(d["psi"] for d in rows))
    plot_w = width - label_w - 60
    height = top + bar_h * len(rows) + 10
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="PSI by value">']
    for i, d in enumerate(rows):
        y = top + i * bar_h
        w = max(1.0, plot_w * d["psi"] / scale_max)
        colour = "#dc2626" if d["drifted"] else "#2563eb"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
                     f'{escape(d["name"])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 7}" '
                     f'fill="{colour}"/><text x="{label_w + w + 4:.1f}" y="{y + 15}">'
                     f'{d["psi"]:.2f}</text>')
    x = label_w + plot_w * PSI_DRIFT / scale_max
    parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 6}" '
                 f'stroke="#111" stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="12">'
                 f'drift {PSI_DRIFT}</text></svg>')
    return Markup("".join(parts))


def latency_chart(stats: list[Any], width: int = 640, height: int = 180) -> Markup:
    """Predictions per interval (bars) and the interval's p99 latency bound (line), over time."""
    if not stats:
        return Markup("<p>No model_stats reported in this period.</p>")
    points = sorted((s.ended_at, s.predictions, latency_percentiles([s])["p99"] or 0.0)
                    for s in stats)
    left, bottom, top = 50, 24, 10
    span = max(1.0, points[-1][0] - points[0][0])
    most = max(p[1] for p in points) or 1
    slowest = max(p[2] for p in points) or 1.0
    plot_w, plot_h = width - left - 50, height - bottom - top

    def x_of(t: float) -> float:
        return left + plot_w * (t - points[0][0]) / span

    bar_w = max(2.0, plot_w / max(1, len(points)) * 0.6)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="predictions and p99 latency">']
    for t, count, _ in points:
        h = plot_h * count / most
        parts.append(f'<rect x="{x_of(t) - bar_w / 2:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{bar_w:.1f}" height="{h:.1f}" fill="#93c5fd"/>')
    line = " ".join(f"{x_of(t):.1f},{top + plot_h - plot_h * p99 / slowest:.1f}"
                    for t, _, p99 in points)
    first, last = (time.strftime("%m-%d %H:%M", time.localtime(points[i][0])) for i in (0, -1))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#dc2626" stroke-width="2"/>'
                 f'<text x="4" y="{top + 10}">{most} pred.</text>'
                 f'<text x="{width - 46}" y="{top + 10}" fill="#dc2626">{slowest:g} ms</text>'
                 f'<text x="{left}" y="{height - 6}">{first}</text>'
                 f'<text x="{width - 150}" y="{height - 6}">{last}</text></svg>')
    return Markup("".join(parts))


def defect_rate_chart(rows: list[dict[str, Any]], since: float, bucket_s: float,
                      buckets: int, width: int = 720, height: int = 170) -> Markup:
    """Defects per interval, stacked by class, with a legend."""
    if not rows:
        return Markup("")
    labels = sorted({r["label"] for r in rows})
    counts = {(int(r["bucket"]), r["label"]): int(r["n"]) for r in rows}
    totals = [sum(counts.get((b, label), 0) for label in labels) for b in range(buckets)]
    most = max(totals) or 1
    left, top, bottom = 40, 22, 20
    plot_w, plot_h = width - left - 10, height - top - bottom
    bar_w = plot_w / buckets
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="defects per interval by class">']
    for b in range(buckets):
        y = top + plot_h
        for i, label in enumerate(labels):
            h = plot_h * counts.get((b, label), 0) / most
            if h:
                y -= h
                parts.append(f'<rect x="{left + b * bar_w + 1:.1f}" y="{y:.1f}" '
                             f'width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
                             f'fill="{CLASS_COLOURS[i % len(CLASS_COLOURS)]}"/>')
    for i, label in enumerate(labels):
        parts.append(f'<rect x="{left + i * 110}" y="4" width="10" height="10" '
                     f'fill="{CLASS_COLOURS[i % len(CLASS_COLOURS)]}"/>'
                     f'<text x="{left + i * 110 + 14}" y="13">{escape(label)}</text>')
    start = time.strftime("%m-%d %H:%M", time.localtime(since))
    end = time.strftime("%m-%d %H:%M", time.localtime(since + buckets * bucket_s))
    parts.append(f'<text x="2" y="{top + 10}">{most}</text><text x="2" y="{top + plot_h}">0'
                 f'</text><text x="{left}" y="{height - 4}">{start}</text>'
                 f'<text x="{width - 90}" y="{height - 4}">{end}</text></svg>')
    return Markup("".join(parts))
