"""Small, dependency-free SVG charts for the cost report: line charts with reference lines, stacked bars.

Inline SVG keeps the HTML report one self-contained file (no script, no CDN, no image files) whose bytes are
the same on every machine, so a report can be diffed and reviewed like the rest of the render.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 900, 340
MARGIN = {"left": 70, "right": 300, "top": 30, "bottom": 50}  # the right margin holds the legend
# Colour-blind-safe (Okabe-Ito) series colours.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Reference:
    """A dashed horizontal (``axis="y"``) or vertical (``axis="x"``) line, e.g. an SLO or the planned load."""

    label: str
    value: float
    axis: str = "y"


@dataclass(frozen=True)
class LineChart:
    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    references: Sequence[Reference] = field(default_factory=tuple)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _label(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


class _Frame:
    """Maps data coordinates to the plot area."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        self.x_ticks = nice_ticks(min(xs), max(xs))
        self.y_ticks = nice_ticks(min(0.0, *ys), max(ys))
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.width = WIDTH - MARGIN["left"] - MARGIN["right"]
        self.height = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def x(self, value: float) -> float:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - low) / (high - low) * self.width

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.height - (value - low) / (high - low) * self.height


def _axes(frame: _Frame, x_label: str, y_label: str) -> list[str]:
    bottom, right = frame.top + frame.height, frame.left + frame.width
    parts = [f'<rect x="{frame.left}" y="{frame.top}" width="{frame.width}" height="{frame.height}" '
             'fill="none" stroke="#999"/>']
    for tick in frame.x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">{_label(tick)}</text>')
    for tick in frame.y_ticks:
        y = frame.y(tick)
        parts.append(f'<line x1="{frame.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    parts.append(f'<text x="{frame.left + frame.width / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(16 {frame.top + frame.height / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
    return parts


def _svg(title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">'
            f"<title>{escape(title)}</title>"
            f'<text x="{MARGIN["left"]}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def line_chart(chart: LineChart) -> str:
    drawn = [s for s in chart.series if s.points]
    xs = [x for s in drawn for x, _ in s.points] + [r.value for r in chart.references if r.axis == "x"]
    ys = [y for s in drawn for _, y in s.points] + [r.value for r in chart.references if r.axis == "y"]
    if not xs or not ys:
        return _svg(chart.title, ['<text x="100" y="150">no data</text>'])
    frame = _Frame(xs, ys)
    body = _axes(frame, chart.x_label, chart.y_label)
    for index, series in enumerate(drawn):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in series.points)
        body.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        body += [f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5" fill="{colour}"/>'
                 for x, y in series.points]
        legend_y = MARGIN["top"] + 14 * index
        body.append(f'<rect x="{WIDTH - MARGIN["right"] + 10}" y="{legend_y}" width="10" height="10" '
                    f'fill="{colour}"/><text x="{WIDTH - MARGIN["right"] + 25}" y="{legend_y + 9}">'
                    f"{escape(series.name)}</text>")
    for reference in chart.references:
        if reference.axis == "y":
            y = frame.y(reference.value)
            body.append(f'<line class="reference" x1="{frame.left}" y1="{y:.1f}" x2="{frame.left + frame.width}" '
                        f'y2="{y:.1f}" stroke="#D55E00" stroke-dasharray="5 4"/>'
                        f'<text x="{frame.left + frame.width - 4}" y="{y - 4:.1f}" text-anchor="end" '
                        f'fill="#D55E00">{escape(reference.label)}</text>')
        else:
            x = frame.x(reference.value)
            body.append(f'<line class="reference" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" '
                        f'y2="{frame.top + frame.height}" stroke="#555" stroke-dasharray="2 3"/>'
                        f'<text x="{x + 4:.1f}" y="{frame.top + 12}" fill="#555">{escape(reference.label)}</text>')
    return _svg(chart.title, body)


def stacked_bar(title: str, unit: str, parts: Sequence[tuple[str, float]], total: float) -> str:
    """One horizontal bar of ``total`` split into ``parts`` (name, value), e.g. a GPU's memory."""
    width = WIDTH - MARGIN["left"] - MARGIN["right"]
    body, x = [], float(MARGIN["left"])
    for index, (name, value) in enumerate(parts):
        w = max(0.0, value) / total * width if total > 0 else 0.0
        colour = COLOURS[index % len(COLOURS)]
        body.append(f'<rect class="segment" x="{x:.1f}" y="60" width="{w:.1f}" height="40" fill="{colour}"/>')
        legend_y = 130 + 16 * index
        body.append(f'<rect x="{MARGIN["left"]}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{MARGIN["left"] + 15}" y="{legend_y + 9}">{escape(name)}: {value:.1f} {unit}</text>')
        x += w
    body.append(f'<rect x="{MARGIN["left"]}" y="60" width="{width}" height="40" fill="none" stroke="#333"/>'
                f'<text x="{MARGIN["left"] + width + 6}" y="85">{total:.1f} {unit}</text>')
    return _svg(title, body)
