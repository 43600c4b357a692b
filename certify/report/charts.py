"""Inline SVG charts for the HTML report.

Pure functions of plain numbers returning SVG text: no script, no fonts, no URLs, every text escaped. A chart
without data returns a short "no data" note instead of an empty frame. Axes that may span decades (latency,
speedup) are logarithmic, so a 0.05 ms candidate and a 20 ms baseline share one readable chart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from certify.verdict import format_value

VERDICT_COLOUR = {"pass": "#1a7f37", "fail": "#cf222e", "not_evaluated": "#9a6700", "error": "#8250df"}
BASELINE, CANDIDATE = "#8c959f", "#0969da"
INK, MUTED, GRID, THRESHOLD = "#1f2328", "#59636e", "#d8dee4", "#953800"
FAIL_ZONE, PASS_ZONE = "#fff5f5", "#f0faf3"
WIDTH = 880  # the report's content width, so charts show at their natural size
LABEL_CHARS = 30


# --- text and numbers ----------------------------------------------------------------------------------------


def text(x: float, y: float, content: str, *, size: float = 11, anchor: str = "start", fill: str = INK,
         weight: str = "normal", cls: str = "", vertical: bool = False) -> str:
    extra = f" class={quoteattr(cls)}" if cls else ""
    extra += f' transform="rotate(-90 {x:.1f} {y:.1f})"' if vertical else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}"{extra}>{escape(content)}</text>')


def line(x1: float, y1: float, x2: float, y2: float, *, stroke: str = GRID, width: float = 1,
         dash: str = "") -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{dashed}/>')


def svg(width: float, height: float, body: Iterable[str], *, label: str, cls: str) -> str:
    return (f'<svg class={quoteattr("chart " + cls)} role="img" '
            f'aria-label={quoteattr(label)} viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
            f'height="{height:.0f}" preserveAspectRatio="xMinYMin meet">'
            f"<title>{escape(label)}</title>{''.join(body)}</svg>")


def no_data(message: str) -> str:
    return f'<p class="no-data">{escape(message)}</p>'


def shorten(label: str, limit: int = LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def fmt(value: float, unit: str) -> str:
    """A value in its unit: fractions as percentages, ratios with an x, milliseconds with ms."""
    if unit == "%":
        return f"{value:.0%}" if math.isclose(value * 100, round(value * 100), abs_tol=1e-9) else f"{value:.1%}"
    return format_value(value, " ms" if unit == "ms" else unit)


def human_bytes(value: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


# --- scales ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps a data domain [low, high] onto pixels [start, end], linearly or logarithmically."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> float:
        clamped = min(max(value, self.low), self.high)
        span = self._t(self.high) - self._t(self.low)
        return self.start + (self._t(clamped) - self._t(self.low)) / span * (self.end - self.start)

    def ticks(self) -> list[float]:
        return log_ticks(self.low, self.high) if self.log else linear_ticks(self.low, self.high)


def linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if low <= m * 10.0**e <= high]
    if len(ticks) > 8:
        ticks = [t for t in ticks if math.isclose(math.log10(t), round(math.log10(t)))]
    return ticks if len(ticks) >= 2 else linear_ticks(low, high, 4)


def linear_domain(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    low, high = min(values), max(values)
    if math.isclose(low, high):
        half = max(abs(low) * 0.05, 0.01)
        return low - half, high + half
    margin = (high - low) * pad
    return low - margin, high + margin


def log_domain(values: Sequence[float], pad: float = 1.15) -> tuple[float, float]:
    positive = [v for v in values if v > 0]
    low, high = min(positive), max(positive)
    if high / low < 2.0:
        centre = math.sqrt(low * high)
        return centre / math.sqrt(2.0) / pad, centre * math.sqrt(2.0) * pad
    return low / pad, high * pad


def tick_label(value: float, unit: str) -> str:
    if unit == "%":
        return fmt(value, unit)
    return f"{value:g}{unit}" if unit != "ms" else f"{value:g} ms"


def x_axis(scale: Scale, y: float, top: float, unit: str, caption: str = "") -> list[str]:
    parts = [line(scale.start, y, scale.end, y, stroke=MUTED)]
    for tick in scale.ticks():
        x = scale(tick)
        parts += [line(x, top, x, y, stroke=GRID, dash="2 3"), line(x, y, x, y + 4, stroke=MUTED),
                  text(x, y + 16, tick_label(tick, unit), size=10, anchor="middle", fill=MUTED)]
    if caption:
        parts.append(text((scale.start + scale.end) / 2, y + 31, caption, size=10, anchor="middle", fill=MUTED))
    return parts


def y_axis(scale: Scale, x: float, right: float, unit: str) -> list[str]:
    parts = [line(x, scale.start, x, scale.end, stroke=MUTED)]
    for tick in scale.ticks():
        y = scale(tick)
        parts += [line(x, y, right, y, stroke=GRID, dash="2 3"),
                  text(x - 6, y + 3.5, tick_label(tick, unit), size=10, anchor="end", fill=MUTED)]
    return parts


# --- 1. an estimate with its interval against a threshold ------------------------------------------------------


@dataclass(frozen=True)
class IntervalRow:
    label: str
    value: float
    low: float | None
    high: float | None
    verdict: str


def _interval_row(row: IntervalRow, scale: Scale, y: float, unit: str) -> list[str]:
    colour = VERDICT_COLOUR.get(row.verdict, MUTED)
    low = row.value if row.low is None else row.low
    high = row.value if row.high is None else row.high
    x0, x1, xv = scale(low), scale(high), scale(row.value)
    shown = fmt(row.value, unit) + ("" if row.low is None else f"  [{fmt(low, unit)} \u2013 {fmt(high, unit)}]")
    label = [text(scale.start - 10, y + 4, shorten(row.label), anchor="end")] if row.label else []
    return [f'<g class="interval-row" data-label={quoteattr(row.label)}>', *label,
            line(scale.start, y, scale.end, y, stroke="#eef1f4", width=10),
            f'<rect x="{x0:.1f}" y="{y - 5:.1f}" width="{max(x1 - x0, 2):.1f}" height="10" rx="5" '
            f'fill="{colour}" fill-opacity="0.28" stroke="{colour}" stroke-width="1"/>',
            f'<circle cx="{xv:.1f}" cy="{y:.1f}" r="5" fill="{colour}" stroke="#fff" stroke-width="1.5"/>',
            text(scale.end + 10, y + 4, shown, size=10.5), "</g>"]


def _threshold_marks(scale: Scale, threshold: float, top: float, bottom: float, unit: str,
                     higher_is_better: bool) -> list[str]:
    x = scale(threshold)
    zone = (scale.start, x) if higher_is_better else (x, scale.end)
    return [f'<rect x="{zone[0]:.1f}" y="{top:.1f}" width="{max(zone[1] - zone[0], 0):.1f}" '
            f'height="{bottom - top:.1f}" fill="{FAIL_ZONE}"/>',
            line(x, top - 4, x, bottom, stroke=THRESHOLD, width=1.5, dash="5 3"),
            text(x, top - 8, f"threshold {fmt(threshold, unit)}", size=10, anchor="middle", fill=THRESHOLD)]


def _finite_row(row: IntervalRow) -> IntervalRow:
    bounds = [v if v is not None and math.isfinite(v) else None for v in (row.low, row.high)]
    low, high = bounds if None not in bounds else (None, None)
    return IntervalRow(row.label, row.value, low, high, row.verdict)


def interval_chart(rows: Sequence[IntervalRow], threshold: float | None, *, unit: str, title: str,
                   log: bool = False, higher_is_better: bool = True, width: float = WIDTH) -> str:
    """One row per estimate: point, interval band and printed value, against a dashed threshold line with
    the failing side shaded. Rows with an empty label leave out the label column; non-finite figures are left out."""
    rows = [_finite_row(r) for r in rows if math.isfinite(r.value)]
    if not rows:
        return no_data(f"{title}: no measurement")
    values = [v for r in rows for v in (r.value, r.low, r.high) if v is not None]
    values += [threshold] if threshold is not None else []
    values += [1.0] if log else []
    low, high = log_domain(values) if log else linear_domain(values)
    top, pitch = 30.0, 30.0
    bottom = top + pitch * len(rows)
    label_width = min(max(len(shorten(r.label)) for r in rows) * 6.4, 6.4 * LABEL_CHARS)
    scale = Scale(low, high, label_width + 24.0, width - 170.0, log=log)
    body = [] if threshold is None else _threshold_marks(scale, threshold, top, bottom, unit, higher_is_better)
    body += x_axis(scale, bottom, top, unit, "log scale" if log else "")
    for index, row in enumerate(rows):
        body += _interval_row(row, scale, top + pitch * (index + 0.5), unit)
    return svg(width, bottom + (40 if log else 26), body, label=title, cls="interval-chart")


def speedup_chart(rows: Sequence[IntervalRow], min_speedup: float | None, width: float = WIDTH) -> str:
    return interval_chart(rows, min_speedup, unit="x", title="Speedup over the baseline (ratio of medians)",
                          log=True, width=width)


def retention_chart(rows: Sequence[IntervalRow], min_retention: float | None, width: float = WIDTH) -> str:
    return interval_chart(rows, min_retention, unit="%", title="Accuracy retention (candidate / baseline)",
                          width=width)


# --- 2. latency distributions ----------------------------------------------------------------------------------


def _positive_ms(samples_ns: Sequence[float] | None) -> np.ndarray:
    values = np.asarray(list(samples_ns or []), dtype=float) / 1e6
    return values[np.isfinite(values) & (values > 0)]


def _histogram_path(counts: np.ndarray, edges: np.ndarray, scale: Scale, base: float, height: float) -> str:
    """A step outline of the histogram, bar height proportional to the square root of the count so that
    rare slow iterations (the tail the stability gate cares about) stay visible next to the mode."""
    peak = math.sqrt(max(int(counts.max()), 1))
    points = [f"M{scale(float(edges[0])):.1f},{base:.1f}"]
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        y = base - height * math.sqrt(float(count)) / peak
        points.append(f"L{scale(float(left)):.1f},{y:.1f}L{scale(float(right)):.1f},{y:.1f}")
    points.append(f"L{scale(float(edges[-1])):.1f},{base:.1f}Z")
    return "".join(points)


def _latency_row(name: str, values: np.ndarray, edges: np.ndarray, scale: Scale, top: float,
                 colour: str) -> list[str]:
    height, base = 42.0, top + 76.0
    counts, _ = np.histogram(values, bins=edges)
    p50, p99 = (float(v) for v in np.percentile(values, [50, 99]))
    summary = f"{name}: p50 {fmt(p50, 'ms')} \u00b7 p99 {fmt(p99, 'ms')} \u00b7 {values.size} samples"
    parts = [f'<g class="latency-row" data-series="{escape(name)}">',
             text(scale.start, top + 10, summary, size=10.5, fill=INK, weight="600"),
             f'<path d="{_histogram_path(counts, edges, scale, base, height)}" fill="{colour}" '
             f'fill-opacity="0.35" stroke="{colour}" stroke-width="1"/>',
             line(scale.start, base, scale.end, base, stroke=GRID)]
    for label, value, dash in (("p50", p50, ""), ("p99", p99, "3 2")):
        x = scale(value)
        parts += [line(x, base - height - 3, x, base, stroke=colour, width=1.6, dash=dash),
                  text(x, base - height - 6, label, size=9, anchor="middle", fill=colour, weight="600")]
    return [*parts, "</g>"]


def latency_chart(baseline_ns: Sequence[float] | None, candidate_ns: Sequence[float] | None,
                  *, bins: int = 60, width: float = WIDTH) -> str:
    """Per-iteration latency histograms (baseline above candidate) on one shared log-ms axis,
    with p50 and p99 marked."""
    series = [(n, v, c) for n, v, c in (("baseline", _positive_ms(baseline_ns), BASELINE),
                                        ("candidate", _positive_ms(candidate_ns), CANDIDATE)) if v.size]
    if not series:
        return no_data("no latency samples recorded")
    low, high = log_domain([float(f(v)) for _, v, _ in series for f in (np.min, np.max)], pad=1.05)
    scale = Scale(low, high, 40.0, width - 24.0, log=True)
    edges = np.logspace(math.log10(low), math.log10(high), bins + 1)
    body: list[str] = []
    for index, (name, values, colour) in enumerate(series):
        body += _latency_row(name, values, edges, scale, 4.0 + 86.0 * index, colour)
    axis_y = 4.0 + 86.0 * len(series)
    body += x_axis(scale, axis_y, 4.0, "ms", "latency per inference (log scale; bar height \u221d \u221acount)")
    return svg(width, axis_y + 40, body, label="Latency distribution, baseline vs candidate", cls="latency-chart")


# --- 3. memory bars --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryFigures:
    baseline_model: float | None
    candidate_model: float | None
    baseline_file: float | None
    candidate_file: float | None
    candidate_limit: float | None = None  # the largest candidate footprint the policy accepts


def _memory_bar(name: str, value: float | None, reference: float | None, scale: Scale, y: float,
                colour: str) -> list[str]:
    """A bar with its figure in a fixed column right of the scale (so a limit line never crosses the text)."""
    if value is None:
        return [text(scale.start - 10, y + 4, name, anchor="end", fill=MUTED),
                text(scale.end + 14, y + 4, "not measured", size=10.5, fill=MUTED)]
    width = max(scale(value) - scale.start, 1.5)
    note = human_bytes(value)
    if reference:
        note += f"  ({value / reference - 1:+.1%})"
    return [text(scale.start - 10, y + 4, name, anchor="end"),
            f'<rect x="{scale.start:.1f}" y="{y - 8:.1f}" width="{width:.1f}" height="16" rx="2" fill="{colour}"/>',
            text(scale.end + 14, y + 4, note, size=10.5, weight="600" if reference else "normal")]


def _memory_group(title: str, baseline: float | None, candidate: float | None, limit: float | None,
                  top: float, width: float) -> list[str]:
    largest = max(v for v in (baseline, candidate, limit, 1.0) if v is not None)
    scale = Scale(0.0, largest, 110.0, width - 190.0)
    parts = [f'<g class="memory-group" data-title={quoteattr(title)}>', text(12, top + 12, title, weight="600"),
             *_memory_bar("baseline", baseline, None, scale, top + 32, BASELINE),
             *_memory_bar("candidate", candidate, baseline, scale, top + 56, CANDIDATE)]
    if limit is not None:
        x = scale(limit)
        parts += [line(x, top + 20, x, top + 66, stroke=THRESHOLD, width=1.5, dash="4 3"),
                  text(x, top + 77, f"policy limit {human_bytes(limit)}", size=9.5, anchor="middle",
                       fill=THRESHOLD)]
    return [*parts, "</g>"]


def memory_chart(figures: MemoryFigures, width: float = WIDTH) -> str:
    """Baseline vs candidate bars for resident model memory and for file size, each group on its own scale."""
    groups = [("Resident model memory", figures.baseline_model, figures.candidate_model, figures.candidate_limit),
              ("Model file size", figures.baseline_file, figures.candidate_file, None)]
    groups = [g for g in groups if g[1] is not None or g[2] is not None]
    if not groups:
        return no_data("no memory measurement")
    body: list[str] = []
    for index, (title, baseline, candidate, limit) in enumerate(groups):
        body += _memory_group(title, baseline, candidate, limit, 4.0 + 86.0 * index, width)
    return svg(width, 4 + 86 * len(groups), body, label="Memory, baseline vs candidate", cls="memory-chart")


# --- 4. Pareto chart -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParetoPoint:
    label: str
    speedup: float
    retention: float
    memory: float | None  # resident model bytes


def dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    """a has >= speedup, >= retention and <= memory than b, and is strictly better on one of them.
    Memory known for one and not the other cannot be compared, so neither dominates."""
    if (a.memory is None) != (b.memory is None):
        return False
    less_memory = a.memory is not None and b.memory is not None and a.memory < b.memory
    more_memory = a.memory is not None and b.memory is not None and a.memory > b.memory
    no_worse = a.speedup >= b.speedup and a.retention >= b.retention and not more_memory
    return no_worse and (a.speedup > b.speedup or a.retention > b.retention or less_memory)


def dominated(points: Sequence[ParetoPoint]) -> set[str]:
    """Labels of the points some other point dominates."""
    return {b.label for b in points if any(a is not b and dominates(a, b) for a in points)}


Box = tuple[float, float, float, float]  # left, top, right, bottom


def _hits(box: Box, circles: Sequence[tuple[float, float, float]], boxes: Sequence[Box]) -> bool:
    left, top, right, bottom = box
    for cx, cy, r in circles:
        nearest_x, nearest_y = min(max(cx, left), right), min(max(cy, top), bottom)
        if (nearest_x - cx) ** 2 + (nearest_y - cy) ** 2 < (r + 1) ** 2:
            return True
    return any(left < b[2] and b[0] < right and top < b[3] and b[1] < bottom for b in boxes)


def _candidate_boxes(x: float, y: float, r: float, width: float) -> list[Box]:
    """Where a label may go around its marker, in order of preference: right, left, above, below."""
    half = width / 2
    return [(x + r + 4, y - 7, x + r + 4 + width, y + 6), (x - r - 4 - width, y - 7, x - r - 4, y + 6),
            (x - half, y - r - 16, x + half, y - r - 3), (x - half, y + r + 3, x + half, y + r + 16)]


def place_labels(spots: Sequence[tuple[float, float, float]], widths: Sequence[float],
                 bounds: tuple[float, float]) -> list[Box]:
    """A box per label that overlaps no marker and no other label when one of four spots allows it; otherwise
    the first spot inside the plot, pushed down until it clears the labels already placed."""
    placed: list[Box] = []
    for (x, y, r), width in zip(spots, widths, strict=True):
        options = [b for b in _candidate_boxes(x, y, r, width) if bounds[0] <= b[0] and b[2] <= bounds[1]]
        options = options or _candidate_boxes(x, y, r, width)[1:2]
        box = next((b for b in options if not _hits(b, spots, placed)), options[0])
        while _hits(box, [], placed):
            box = (box[0], box[1] + 13, box[2], box[3] + 13)
        placed.append(box)
    return placed


def _pareto_marker(point: ParetoPoint, x: float, y: float, radius: float, is_dominated: bool) -> str:
    state = "dominated" if is_dominated else "frontier"
    paint = (f'fill="none" stroke="{BASELINE}" stroke-width="1.5" stroke-dasharray="3 2"' if is_dominated
             else f'fill="{CANDIDATE}" fill-opacity="0.55" stroke="{CANDIDATE}" stroke-width="1.5"')
    memory = "memory not measured" if point.memory is None else human_bytes(point.memory)
    tip = f"{point.label}: {fmt(point.speedup, 'x')}, retention {fmt(point.retention, '%')}, {memory}"
    return (f'<g class={quoteattr("point " + state)} data-candidate={quoteattr(point.label)}>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" {paint}><title>{escape(tip)}</title></circle></g>')


def _pareto_frame(xs: Scale, ys: Scale, min_speedup: float | None, min_retention: float | None) -> list[str]:
    x0 = xs(min_speedup) if min_speedup is not None else xs.start
    y0 = ys(min_retention) if min_retention is not None else ys.end
    parts = [f'<rect x="{x0:.1f}" y="{ys.end:.1f}" width="{xs.end - x0:.1f}" height="{y0 - ys.end:.1f}" '
             f'fill="{PASS_ZONE}"/>',
             *x_axis(xs, ys.start, ys.end, "x", "speedup over baseline (log scale)"),
             *y_axis(ys, xs.start, xs.end, "%"),
             text(16, (ys.start + ys.end) / 2, "accuracy retention", size=10, anchor="middle", fill=MUTED,
                  vertical=True)]
    if min_speedup is not None:
        parts += [line(x0, ys.end, x0, ys.start, stroke=THRESHOLD, width=1.5, dash="5 3"),
                  text(x0, ys.end - 6, f"min speedup {fmt(min_speedup, 'x')}", size=9.5, anchor="middle",
                       fill=THRESHOLD)]
    if min_retention is not None:
        parts += [line(xs.start, y0, xs.end, y0, stroke=THRESHOLD, width=1.5, dash="5 3"),
                  text(xs.start + 4, y0 - 5, f"min retention {fmt(min_retention, '%')}", size=9.5,
                       fill=THRESHOLD)]
    return parts


def _pareto_labels(points: Sequence[ParetoPoint], spots: list[tuple[float, float, float]],
                   losers: set[str], bounds: tuple[float, float]) -> list[str]:
    names = [shorten(p.label, 28) + ("  (dominated)" if p.label in losers else "") for p in points]
    boxes = place_labels(spots, [6.0 * len(n) for n in names], bounds)
    return [text(box[0], box[3] - 3, name, size=10.5, fill=MUTED if p.label in losers else INK,
                 cls="dominated-label" if p.label in losers else "point-label")
            for p, name, box in zip(points, names, boxes, strict=True)]


def pareto_chart(points: Sequence[ParetoPoint], min_speedup: float | None, min_retention: float | None,
                 width: float = WIDTH) -> str:
    """Speedup (x, log) against accuracy retention (y), marker area proportional to resident memory;
    dominated candidates hollow and grey, the region meeting both thresholds shaded."""
    points = [p for p in points if p.speedup > 0 and math.isfinite(p.speedup) and math.isfinite(p.retention)]
    if not points:
        return no_data("no candidate has both a speed and an accuracy measurement")
    xs_values = [p.speedup for p in points] + [1.0] + ([min_speedup] if min_speedup else [])
    ys_values = [p.retention for p in points] + [1.0] + ([min_retention] if min_retention else [])
    xs = Scale(*log_domain(xs_values, pad=1.3), 70.0, width - 20.0, log=True)
    ys = Scale(*linear_domain(ys_values, pad=0.12), 340.0, 24.0)
    losers = dominated(points)
    largest = max((p.memory for p in points if p.memory), default=0.0)
    spots = []
    for p in points:
        radius = 6.0 if not p.memory or not largest else max(22.0 * math.sqrt(p.memory / largest), 3.5)
        spots.append((xs(p.speedup), ys(p.retention), radius))
    body = _pareto_frame(xs, ys, min_speedup, min_retention)
    # big markers first, small ones over them; hollow (dominated) outlines last so a filled one never hides them
    order = sorted(range(len(points)), key=lambda i: (points[i].label in losers, -spots[i][2]))
    body += [_pareto_marker(points[i], *spots[i], points[i].label in losers) for i in order]
    body += _pareto_labels(points, spots, losers, (xs.start + 2, width - 4.0))
    legend = "marker area \u221d resident model memory \u00b7 hollow grey: dominated by another candidate"
    body.append(text(70, 392, legend, size=10, fill=MUTED))
    return svg(width, 400, body, label="Pareto chart: speedup vs accuracy retention", cls="pareto-chart")


# --- one evidence record as a standalone SVG document (for attachments, e.g. Allure) ----------------------------


def _record_chart(gate: str, result: Mapping[str, Any], measurement: Mapping[str, Any]) -> str:
    threshold = result.get("threshold")
    if gate == "speed":
        return latency_chart(measurement.get("baseline_ns"), measurement.get("candidate_ns"))
    if gate == "stability":
        return latency_chart(None, measurement.get("candidate_ns"))
    if gate == "memory":
        base, cand = measurement.get("baseline") or {}, measurement.get("candidate") or {}
        limit = base.get("model_bytes") * (1.0 - threshold) if base.get("model_bytes") and threshold else None
        return memory_chart(MemoryFigures(base.get("model_bytes"), cand.get("model_bytes"), base.get("file_bytes"),
                                          cand.get("file_bytes"), limit))
    if gate == "accuracy" and result.get("value") is not None:
        low, high = result.get("interval") or (None, None)
        return retention_chart([IntervalRow("retention", result["value"], low, high, result["verdict"])], threshold)
    return ""


def gate_chart(record: Mapping[str, Any]) -> str:
    """The chart of one evidence record's gate as a standalone SVG document, or "" when it has nothing to draw."""
    result, measurement = record.get("result") or {}, record.get("measurement") or {}
    chart = _record_chart(str(record.get("gate", "")), result, measurement) if measurement else ""
    if not chart.startswith("<svg"):
        return ""
    return '<svg xmlns="http://www.w3.org/2000/svg" font-family="Helvetica, Arial, sans-serif"' + chart[len("<svg"):]
