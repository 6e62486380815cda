"""A small SVG line chart (requests per second over time): plain text, no dependency."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 900, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _nice(top: float) -> float:
    step = 1.0
    while step * 10 < top:
        step *= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= top:
            return step * factor
    return step * 10


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    x_label: str = "minutes",
    y_label: str = "requests/s",
    x_start_s: float = 0.0,
    step_s: float = 1.0,
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """`series`: (name, values every `step_s` seconds from `x_start_s`); `marks`: (second, label)
    vertical lines (an outage's start and end)."""
    points = max((len(values) for _, values in series), default=1)
    top = _nice(max((max(values, default=0.0) for _, values in series), default=1.0) or 1.0)
    span_s = max(points * step_s, 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(second: float) -> float:
        return LEFT + (second - x_start_s) / span_s * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
    ]
    for i in range(6):
        value = top * i / 5
        out.append(
            f'<line x1="{LEFT - 4}" y1="{y(value):.1f}" x2="{LEFT + plot_w}" y2="{y(value):.1f}" '
            'stroke="#ddd"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    minutes = span_s / 60
    tick = max(1, round(minutes / 10))
    m = 0
    while m <= minutes:
        second = x_start_s + m * 60
        out.append(
            f'<text x="{x(second):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{(second / 60):g}</text>'
        )
        m += tick
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    for second, label in marks:
        out.append(
            f'<line x1="{x(second):.1f}" y1="{TOP}" x2="{x(second):.1f}" y2="{TOP + plot_h}" '
            'stroke="#888" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{x(second) + 3:.1f}" y="{TOP + 12}" fill="#555">{escape(label)}</text>')
    for n, (name, values) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{x(x_start_s + i * step_s):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{path}"/>')
        out.append(f'<text x="{LEFT + 10 + 170 * n}" y="{TOP - 6}" fill="{colour}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def averaged(values: Sequence[int], window: int) -> list[float]:
    """Means over consecutive windows of `window` seconds (a readable curve of a per-second series)."""
    return [sum(values[i : i + window]) / len(values[i : i + window]) for i in range(0, len(values), window)]
