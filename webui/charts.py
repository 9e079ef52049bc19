"""Line charts drawn as plain SVG (for gr.HTML): one polyline per series, its name in the legend, readable axes.

Why not gr.LinePlot: in Gradio 6.31 a LinePlot with a colour column draws its series without stroke (the axes
scale, the lines are invisible), which is exactly what users saw on the Runs overlay and the loss chart. Here every
series is a ``<polyline>`` carrying ``data-series``, ``data-count`` and ``data-last-step``, so a browser test can
check what is drawn.
"""

from __future__ import annotations

import html
import math

Series = dict[str, list[tuple[float, float]]]
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 34
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def palette(names: list[str]) -> dict[str, str]:
    """A colour per series name, in order (Tableau 10: distinct on white)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < high - step * 1e-9:  # the last tick is the first at or above ``high``
        ticks.append(round(start + len(ticks) * step, 12))
    return ticks if len(ticks) > 1 else [ticks[0], round(ticks[0] + step, 12)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def line_chart(series: Series, title: str, y_label: str = "", x_label: str = "step", colors: dict[str, str] | None = None,
               empty: str = "no points yet", small: bool = False) -> str:
    """An SVG line chart of ``series`` (name -> [(step, value)]) with axes, grid and a legend (``small``: for a
    half-width column, same font size on screen)."""
    width = WIDTH // 2 if small else WIDTH
    height = HEIGHT * 3 // 4 if small else HEIGHT
    colors = {**palette(list(series)), **(colors or {})}
    drawn = {name: points for name, points in series.items() if points}
    head = f'<div class="tl-chart"><div class="tl-chart-title">{html.escape(title)}</div>'
    if not drawn:
        return f'{head}<div class="tl-chart-empty" data-empty="1">{html.escape(empty)}</div></div>'
    xs = [x for points in drawn.values() for x, _ in points]
    ys = [y for points in drawn.values() for _, y in points]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    parts = [f'<svg viewBox="0 0 {width} {height}" class="tl-chart-svg" role="img" aria-label="{html.escape(title)}" '
             f'font-family="sans-serif" font-size="11" style="width:100%;height:auto">']
    for y in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#d9d9d9"/>'
                     f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" fill="#666">{_label(y)}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{px(x):.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" fill="#666">{_label(x)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{height - 3}" text-anchor="middle">{html.escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
                     f'transform="rotate(-90 12 {TOP + plot_h / 2:.0f})">{html.escape(y_label)}</text>')
    for name, points in drawn.items():
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        color = colors.get(name, PALETTE[0])
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2" data-series="{html.escape(name)}" '
            f'data-count="{len(points)}" data-last-step="{points[-1][0]:g}"><title>{html.escape(name)}</title></polyline>')
        if len(points) == 1:
            parts.append(f'<circle cx="{px(points[0][0]):.1f}" cy="{py(points[0][1]):.1f}" r="3" fill="{color}"/>')
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="tl-legend-item"><svg width="16" height="6"><rect width="16" height="3" y="1.5" '
        f'fill="{colors.get(n, PALETTE[0])}"/></svg> {html.escape(n)}</span>' for n in drawn)
    return f'{head}{"".join(parts)}<div class="tl-legend">{legend}</div></div>'


def histogram_chart(bins: list[tuple[int, int, int]], cutoff: int, title: str, x_label: str = "tokens per example",
                    empty: str = "no examples") -> str:
    """An SVG bar chart of (low, high, count) bins with a dashed vertical line after ``cutoff`` tokens; bars past the
    cutoff are drawn in red. Bars carry ``data-low``/``data-high``/``data-count``, the line ``data-cutoff``."""
    head = f'<div class="tl-chart"><div class="tl-chart-title">{html.escape(title)}</div>'
    if not bins:
        return f'{head}<div class="tl-chart-empty" data-empty="1">{html.escape(empty)}</div></div>'
    x0, x1 = bins[0][0], bins[-1][1] + 1
    y_ticks = [t for t in nice_ticks(0, max(count for _, _, count in bins)) if t == int(t)]  # rows: whole numbers
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / (y_ticks[-1] or 1) * plot_h

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="tl-chart-svg" role="img" aria-label="{html.escape(title)}" '
             f'font-family="sans-serif" font-size="11" style="width:100%;height:auto">']
    for y in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#d9d9d9"/>'
                     f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" fill="#666">{_label(y)}</text>')
    for x in nice_ticks(x0, x1):
        if x0 <= x <= x1:
            parts.append(f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" fill="#666">{_label(x)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 3}" text-anchor="middle">{html.escape(x_label)}</text>')
    for low, high, count in bins:
        color = PALETTE[2] if low > cutoff else PALETTE[0]
        parts.append(f'<rect class="tl-hist-bar" x="{px(low) + 1:.1f}" y="{py(count):.1f}" width="{max(px(high + 1) - px(low) - 2, 1):.1f}" '
                     f'height="{py(0) - py(count):.1f}" fill="{color}" data-low="{low}" data-high="{high}" data-count="{count}">'
                     f'<title>{low}-{high}: {count}</title></rect>')
    at = px(cutoff + 1)  # the right edge of the cutoff's bin: rows of up to ``cutoff`` tokens fit
    parts.append(f'<line class="tl-cutoff" x1="{at:.1f}" x2="{at:.1f}" y1="{TOP}" y2="{py(0):.1f}" stroke="#b00020" '
                 f'stroke-width="2" stroke-dasharray="5,3" data-cutoff="{cutoff}"/>'
                 f'<text x="{at + 4:.1f}" y="{TOP + 12}" fill="#b00020">cutoff {cutoff}</text></svg>')
    return f"{head}{''.join(parts)}</div>"
