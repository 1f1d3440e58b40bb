"""Line charts as inline SVG, drawn on the server from numbers (the operator dashboard works offline:
no JavaScript, no chart library, no CDN).

`line_chart` returns one `<svg>` element: a <title>, two axes with their labels and ticks at round
steps (1, 2 or 5 × a power of ten, whole numbers on an axis that counts something; labels with
the decimals the step needs, so neighbouring ticks never read the same), a
dashed line per reference value (e.g. the norm alarm threshold) and per series one
`<polyline class="series" data-series="…" data-points="N" points="x,y …">` plus a dot per point
(a series of one point is still visible). Every text in it (title, labels, series names) is
escaped here, so the markup can be inserted into a page as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import escape

# Colour-blind safe (Okabe-Ito), dark enough on white for text.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class RefLine:
    """A horizontal line at y (e.g. an alarm threshold)."""

    name: str
    y: float


def fmt(v: float) -> str:
    """A tick label: 3 significant digits, no exponent for everyday magnitudes."""
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.3g}"
    return f"{v:.2e}"


def _range(values: Sequence[float], integer: bool = False) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = 1.0 if integer else abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    return lo, hi


@dataclass
class Axis:
    """The ticks of one axis: `lo`..`hi` is the drawn range (the outer ticks), labels as printed."""

    lo: float
    hi: float
    ticks: list[float]
    labels: list[str]


def axis(lo: float, hi: float, integer: bool = False, target: int = 5) -> Axis:
    """Round ticks covering [lo, hi], about `target` of them: a step of 1, 2 or 5 × 10^k (at least
    1 when `integer`: an axis of versions or edits has no 1.5), the range widened to whole steps,
    and labels with as many decimals as the step has, so that no two ticks read the same."""
    if not hi > lo:
        lo, hi = _range([lo, hi], integer)
    raw = (hi - lo) / max(1, target - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, float(round(step)))
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [first + i * step for i in range(round((last - first) / step) + 1)]
    decimals = 0 if integer else max(0, -math.floor(math.log10(step) + 1e-9))
    big = max(abs(first), abs(last)) >= 1e5
    labels = [fmt(t) if big else f"{t:.{decimals}f}" for t in ticks]
    # -0.0 reads as "-0.00": a zero is a zero.
    labels = [lab.lstrip("-") if float(lab) == 0 else lab for lab in labels] if not big else labels
    return Axis(first, last, ticks, labels)


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    refs: Sequence[RefLine] = (),
    *,
    width: int = 640,
    height: int = 260,
    y_from_zero: bool = True,
    x_integer: bool = False,
    chart_id: str = "chart",
) -> str:
    """One SVG line chart of `series` (x, y points) against shared axes; `refs` drawn dashed.
    `x_integer`: the x quantity is a count (versions, edits), so its ticks are whole numbers."""
    finite = [(x, y) for line in series for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
    left, right, top, bottom = 64, 16, 28, 44
    legend_h = 18 * (len(series) + len(refs))
    plot_w, plot_h = width - left - right, height - top - bottom
    total_h = height + legend_h
    xs = [x for x, _ in finite] or [0.0, 1.0]
    ys = [y for _, y in finite] + [r.y for r in refs if math.isfinite(r.y)]
    ys = ys or [0.0, 1.0]
    if y_from_zero:
        ys = ys + [0.0]
    lo, hi = _range(xs, x_integer)
    x_axis = axis(lo, hi, integer=x_integer)
    lo, hi = _range(ys)
    y_axis = axis(lo, hi + (hi - lo) * 0.05)  # headroom for the top point
    x0, x1, y0, y1 = x_axis.lo, x_axis.hi, y_axis.lo, y_axis.hi

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    tid = f"{escape(chart_id)}-title"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-labelledby="{tid}" '
        f'viewBox="0 0 {width} {total_h}" width="{width}" height="{total_h}">',
        f'<title id="{tid}">{escape(title)}</title>',
        f'<text class="chart-title" x="{left}" y="18">{escape(title)}</text>',
        # axes
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
    ]
    for v, label in zip(x_axis.ticks, x_axis.labels, strict=True):
        out.append(
            f'<line class="tick-mark" x1="{px(v):.1f}" y1="{top + plot_h}" x2="{px(v):.1f}" y2="{top + plot_h + 4}" '
            f'stroke="#444"/><text class="tick" data-axis="x" x="{px(v):.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{label}</text>'
        )
    for v, label in zip(y_axis.ticks, y_axis.labels, strict=True):
        out.append(
            f'<line class="tick-mark" x1="{left - 4}" y1="{py(v):.1f}" x2="{left}" y2="{py(v):.1f}" stroke="#444"/>'
            f'<text class="tick" data-axis="y" x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{top + plot_h + 36}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text class="axis-label" x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    legend_y = height + 4
    for r in refs:
        if not math.isfinite(r.y):
            continue
        y = py(r.y)
        out.append(
            f'<line class="threshold" data-y="{r.y!r}" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" '
            f'y2="{y:.1f}" stroke="#b00020" stroke-dasharray="6 4"><title>{escape(r.name)}: {fmt(r.y)}</title></line>'
        )
        out.append(
            f'<line x1="{left}" y1="{legend_y + 5}" x2="{left + 24}" y2="{legend_y + 5}" stroke="#b00020" '
            f'stroke-dasharray="6 4"/><text class="legend" x="{left + 30}" y="{legend_y + 9}">'
            f"{escape(r.name)} ({fmt(r.y)})</text>"
        )
        legend_y += 18
    for i, line in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(x, y) for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline class="series" data-series="{escape(line.name)}" data-points="{len(pts)}" '
            f'points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>'
        )
        for x, y in pts:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                f"<title>{escape(line.name)}: {fmt(y)} at {f'{x:.0f}' if x_integer else fmt(x)}</title></circle>"
            )
        out.append(
            f'<rect x="{left}" y="{legend_y}" width="24" height="10" fill="{color}"/>'
            f'<text class="legend" x="{left + 30}" y="{legend_y + 9}">{escape(line.name)}</text>'
        )
        legend_y += 18
    out.append("</svg>")
    return "\n".join(out)
