"""certify.report.charts: inline SVG charts as pure functions of numbers, safe with any label and any data."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from certify.report import charts
from certify.report.charts import IntervalRow, MemoryFigures, ParetoPoint

MIB = 1024 * 1024


def parsed(svg: str) -> ET.Element:
    """The chart parses as XML (so it is well formed inside HTML too) and has a size."""
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and float(root.attrib["width"]) > 0 and float(root.attrib["height"]) > 0
    return root


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in parsed(svg).iter() if t.tag.endswith("text")]


# --- dominance -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "a_dominates_b"), [
    (ParetoPoint("a", 4.0, 0.99, 10 * MIB), ParetoPoint("b", 3.0, 0.90, 12 * MIB), True),
    (ParetoPoint("a", 4.0, 0.99, 10 * MIB), ParetoPoint("b", 4.0, 0.99, 12 * MIB), True),  # memory alone
    (ParetoPoint("a", 4.0, 0.99, 10 * MIB), ParetoPoint("b", 4.0, 0.99, 10 * MIB), False),  # equal: neither
    (ParetoPoint("a", 5.0, 0.90, 10 * MIB), ParetoPoint("b", 4.0, 0.99, 10 * MIB), False),  # a trade-off
    (ParetoPoint("a", 5.0, 0.99, 20 * MIB), ParetoPoint("b", 4.0, 0.98, 10 * MIB), False),  # b is smaller
    (ParetoPoint("a", 5.0, 0.99, None), ParetoPoint("b", 4.0, 0.98, 10 * MIB), False),  # memory incomparable
    (ParetoPoint("a", 5.0, 0.99, None), ParetoPoint("b", 4.0, 0.98, None), True),
])
def test_dominates(a: ParetoPoint, b: ParetoPoint, a_dominates_b: bool) -> None:
    assert charts.dominates(a, b) is a_dominates_b
    assert (charts.dominated([a, b]) == {"b"}) is a_dominates_b


def test_dominated_across_several_candidates() -> None:
    points = [ParetoPoint("fast", 6.0, 0.96, 12 * MIB), ParetoPoint("accurate", 3.0, 1.0, 12 * MIB),
              ParetoPoint("small", 2.5, 0.97, 6 * MIB), ParetoPoint("worse", 2.9, 0.95, 13 * MIB)]
    assert charts.dominated(points) == {"worse"}


def test_pareto_chart_draws_dominated_hollow_and_thresholds() -> None:
    points = [ParetoPoint("good", 4.0, 0.99, 10 * MIB), ParetoPoint("bad", 3.0, 0.90, 12 * MIB)]
    svg = charts.pareto_chart(points, 2.0, 0.95)
    root = parsed(svg)
    groups = {g.attrib["data-candidate"]: g for g in root.iter("g") if "data-candidate" in g.attrib}
    assert groups["bad"].attrib["class"] == "point dominated" and groups["good"].attrib["class"] == "point frontier"
    assert groups["bad"].find("circle").attrib["fill"] == "none"  # type: ignore[union-attr]
    assert {"bad  (dominated)", "good", "min speedup 2x", "min retention 95%"} <= set(texts(svg))


# --- missing data and magnitudes -------------------------------------------------------------------------------


def test_charts_without_data_say_so() -> None:
    for empty in (charts.speedup_chart([], 2.0), charts.latency_chart(None, []), charts.latency_chart([0, -5], None),
                  charts.memory_chart(MemoryFigures(None, None, None, None)), charts.pareto_chart([], 2.0, 0.95)):
        assert empty.startswith('<p class="no-data">') and "<svg" not in empty


def test_latency_chart_spans_decades_on_a_log_axis() -> None:
    baseline = [20_000_000] * 50 + [25_000_000] * 10  # 20 ms
    candidate = [40_000, 45_000, 50_000] * 20  # 0.04 ms: 500x faster
    labels = texts(charts.latency_chart(baseline, candidate))
    assert any(t.startswith("baseline: p50 20") for t in labels)
    assert any(t.startswith("candidate: p50 0.045 ms") for t in labels)
    assert {"0.1 ms", "1 ms", "10 ms"} <= set(labels)


def test_latency_chart_with_identical_samples_and_one_side() -> None:
    labels = texts(charts.latency_chart(None, [1_000_000] * 20))
    assert labels[0] == "candidate: p50 1 ms \u00b7 p99 1 ms \u00b7 20 samples"
    assert not any(t.startswith("baseline") for t in labels)


def test_interval_chart_keeps_far_apart_estimates_on_the_axis() -> None:
    rows = [IntervalRow("slow", 0.6, 0.55, 0.65, "fail"), IntervalRow("fast", 120.0, 100.0, 150.0, "pass"),
            IntervalRow("no interval", 3.0, None, None, "pass")]
    svg = charts.speedup_chart(rows, 2.0)
    points = [float(c.attrib["cx"]) for c in parsed(svg).iter() if c.tag.endswith("circle")]
    assert len(points) == 3 and all(0 < x < charts.WIDTH for x in points) and points[0] < points[2] < points[1]
    assert "120x  [100x \u2013 150x]" in texts(svg) and "3x" in texts(svg)


def test_memory_chart_groups_each_on_its_own_scale_with_the_policy_limit() -> None:
    svg = charts.memory_chart(MemoryFigures(4 * 1024**3, 1 * 1024**3, 3000, 1500, candidate_limit=2 * 1024**3))
    labels = texts(svg)
    assert {"Resident model memory", "Model file size", "4.0 GiB", "1.0 GiB  (-75.0%)", "2.9 KiB",
            "1.5 KiB  (-50.0%)", "policy limit 2.0 GiB"} <= set(labels)
    widths = [float(r.attrib["width"]) for r in parsed(svg).iter() if r.tag.endswith("rect")]
    assert widths[0] == widths[2]  # each group's baseline fills its own scale


def test_memory_chart_with_one_side_missing() -> None:
    labels = texts(charts.memory_chart(MemoryFigures(None, 10 * MIB, None, None)))
    assert labels == ["Resident model memory", "baseline", "not measured", "candidate", "10.0 MiB"]


# --- safety ----------------------------------------------------------------------------------------------------


def test_labels_are_escaped_in_text_and_attributes() -> None:
    name = 'x<script>alert(1)</script>"&\''
    svg = charts.pareto_chart([ParetoPoint(name, 3.0, 0.99, MIB)], 2.0, 0.95)
    svg += charts.speedup_chart([IntervalRow(name, 3.0, 2.9, 3.1, "pass")], 2.0)
    assert "<script" not in svg
    assert name in texts(charts.speedup_chart([IntervalRow(name, 3.0, 2.9, 3.1, "pass")], 2.0))
    assert not re.search(r"https?://", svg)


def test_gate_chart_is_a_standalone_svg_document_or_empty() -> None:
    record = {"gate": "speed", "result": {"verdict": "pass"},
              "measurement": {"baseline_ns": [300_000] * 20, "candidate_ns": [70_000] * 20}}
    doc = charts.gate_chart(record)
    assert doc.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    parsed(doc)
    assert charts.gate_chart({"gate": "speed", "result": {"verdict": "not_evaluated"}, "measurement": {}}) == ""
    assert charts.gate_chart({"gate": "security", "result": {}, "measurement": {"x": 1}}) == ""


def test_non_finite_figures_are_left_out() -> None:
    rows = [IntervalRow("ok", 2.5, 2.4, 2.6, "pass"), IntervalRow("inf", math.inf, 1.0, 2.0, "fail"),
            IntervalRow("open", 3.0, 2.0, math.nan, "pass")]
    labels = texts(charts.speedup_chart(rows, 2.0))
    assert "inf" not in labels and "open" in labels and "3x" in labels
    assert charts.pareto_chart([ParetoPoint("nan", math.nan, 0.9, None)], 2.0, 0.95).startswith("<p")
