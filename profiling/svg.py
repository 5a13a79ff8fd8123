"""Two small inline SVG plots for report.html: no plotting library needed."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def latency_boxes(title: str, series: Sequence[tuple[str, Sequence[float]]]) -> str:
    """Horizontal box plots (p1-p99 whiskers, p25-p75 box, median) with every sample
    drawn as a faint tick, one row per series, sharing an axis in ms."""
    width, left, row_h, top = 640, 120, 44, 28
    height = top + row_h * len(series) + 30
    values = [np.asarray(v, dtype=np.float64) for _, v in series if len(v)]
    hi = max((float(np.percentile(v, 99.5)) for v in values), default=1.0) * 1.05 or 1.0
    scale = (width - left - 20) / hi

    def x(ms: float) -> float:
        return left + min(ms, hi) * scale

    parts = [f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, samples) in enumerate(series):
        y = top + i * row_h + row_h / 2
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<text x="4" y="{y + 4:.0f}" font-size="12">{escape(label)}</text>')
        data = np.asarray(samples, dtype=np.float64)
        if not len(data):
            continue
        p1, p25, p50, p75, p99 = np.percentile(data, (1, 25, 50, 75, 99))
        for v in data:
            parts.append(
                f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{y - 14:.0f}" y2="{y - 9:.0f}" '
                f'stroke="{colour}" stroke-opacity="0.3"/>'
            )
        parts.append(
            f'<line x1="{x(p1):.1f}" x2="{x(p99):.1f}" y1="{y:.0f}" y2="{y:.0f}" stroke="#333"/>'
        )
        parts.append(
            f'<rect x="{x(p25):.1f}" y="{y - 7:.0f}" width="{max(x(p75) - x(p25), 1):.1f}" '
            f'height="14" fill="{colour}" fill-opacity="0.6" stroke="#333"/>'
        )
        parts.append(
            f'<line x1="{x(p50):.1f}" x2="{x(p50):.1f}" y1="{y - 8:.0f}" y2="{y + 8:.0f}" '
            'stroke="#000" stroke-width="2"/>'
        )
    axis_y = top + row_h * len(series) + 4
    parts.append(f'<line x1="{left}" x2="{width - 20}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    for tick in np.linspace(0, hi, 5):
        parts.append(
            f'<text x="{x(tick):.0f}" y="{axis_y + 16}" font-size="11" '
            f'text-anchor="middle">{tick:.3g} ms</text>'
        )
    return _svg(width, height, parts)


def bars(title: str, items: Sequence[tuple[str, float]], unit: str) -> str:
    """Horizontal bars, largest first."""
    width, left, bar_h, top = 640, 170, 20, 28
    height = top + bar_h * max(len(items), 1) + 10
    hi = max((v for _, v in items), default=1.0) or 1.0
    scale = (width - left - 90) / hi
    parts = [f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = top + i * bar_h
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y + 3}" width="{max(value * scale, 1):.1f}" height="14" '
            f'fill="{COLOURS[0]}"/>'
        )
        parts.append(
            f'<text x="{left + value * scale + 6:.0f}" y="{y + 14}" font-size="11">'
            f"{value:.3g} {escape(unit)}</text>"
        )
    return _svg(width, height, parts)


def _svg(width: int, height: float, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}" font-family="sans-serif">\n{body}\n</svg>'
    )
