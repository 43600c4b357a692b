"""The self-contained HTML certification report.

``render_html(results, records, signature)`` turns ``results.json``, the parsed ``evidence.jsonl`` records and
the signing outcome into one HTML file: inline CSS and SVG only, no script and no URL, so it opens offline, under
a ``default-src 'none'`` Content-Security-Policy, and prints. The functions here build a plain view model
(strings, numbers, lists, pre-rendered SVG); the Jinja2 template only lays it out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from collections import defaultdict
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from certify.gates.registry import BUILTIN_REGISTRY
from certify.records import EvidenceRecord, split_case_id
from certify.report import charts
from certify.report.charts import IntervalRow, MemoryFigures, ParetoPoint
from certify.report.lab import lab_view
from certify.report.results import not_evaluated_groups, precisions, run_status
from certify.report.tables import gate_order, host_noise, value_text
from certify.verdict import CERTIFIED, ERROR, FAIL, INCOMPLETE, NOT_EVALUATED, PASS, label

THRESHOLD_UNIT = {"min_accuracy_retention": "%", "min_speedup": "x", "min_memory_reduction": "%",
                  "max_p99_over_p50": "x", "max_drift": "%", "confidence": "%"}
DECISION_RULE = {"lower_bound": "the confidence interval's bound on the threshold's side must clear it",
                 "point": "the point estimate must clear the threshold"}
FIGURE_WIDTH = 650  # a chart beside its headline figure
Entry = dict[str, Any]

Latest = dict[tuple[str, str], EvidenceRecord]  # (case, gate) -> its newest evidence record


def render_html(results: dict[str, Any], records: list[EvidenceRecord], signature: dict[str, Any] | None) -> str:
    """The report as one HTML document (a str, ready to write with UTF-8)."""
    return _environment().get_template("report.html.j2").render(**build_view(results, records, signature))


@functools.cache
def _environment() -> Environment:
    return Environment(loader=PackageLoader("certify.report", "templates"), autoescape=True,
                       trim_blocks=True, lstrip_blocks=True)


def build_view(results: dict[str, Any], records: list[EvidenceRecord],
               signature: dict[str, Any] | None) -> dict[str, Any]:
    entries: list[Entry] = list(results.get("cases") or [])
    thresholds: dict[str, Any] = (results.get("plan") or {}).get("policy", {}).get("thresholds", {})
    latest = latest_records(records)
    gates = gate_columns(entries)
    candidates = [candidate_view(i, case, rows, latest, results, thresholds)
                  for i, (case, rows) in enumerate(sorted(by_case(entries).items()))]
    return {
        "title": f"Certification report \u2014 {(results.get('plan') or {}).get('name', 'unnamed plan')}",
        "banner": banner(results), "gates": gates, "matrix": matrix_rows(candidates, gates),
        "lab": lab_view(results, candidates, gates),
        "overview": overview_charts(entries, thresholds), "candidates": candidates,
        "pareto": pareto_views(entries, latest, thresholds), "not_evaluated": not_evaluated_view(entries),
        "errors": [e for e in candidate_gate_rows(entries) if e["verdict"] == ERROR],
        "stages": stages_view(entries, results, latest), "env": environment_view(results),
        "models": models_view(results), "signature": signature_view(signature),
    }


# --- shared helpers --------------------------------------------------------------------------------------------


def measured(latest: Latest, case: str, gate: str) -> dict[str, Any]:
    """The measurement part of a case's newest record of ``gate`` ({} when there is none)."""
    record = latest.get((case, gate))
    return (record.get("measurement") or {}) if record is not None else {}


def latest_records(records: list[EvidenceRecord]) -> Latest:
    """(case, gate) -> its last record: a later record for the same case and gate supersedes an earlier one."""
    return {(r["case"], r["gate"]): r for r in records if "case" in r and "gate" in r}


def by_case(entries: list[Entry]) -> dict[str, list[Entry]]:
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        grouped[entry["case"]].append(entry)
    return dict(grouped)


def gate_columns(entries: list[Entry]) -> list[str]:
    return gate_order(e["gate"] for e in entries)


def utc_iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt_value(value: float | None, unit: str) -> str:
    return "" if value is None else charts.fmt(value, unit)


def fmt_interval(bounds: list[float], unit: str) -> str:
    return f"{charts.fmt(bounds[0], unit)} \u2013 {charts.fmt(bounds[1], unit)}"


def decisive_bound(result: dict[str, Any]) -> float | None:
    """The figure the gate decided on: the interval's lower bound for >=, upper for <=, else the estimate."""
    interval = result.get("interval")
    if interval:
        return float(interval[0] if result.get("comparison", ">=") == ">=" else interval[1])
    return number(result.get("value"))


# --- verdicts --------------------------------------------------------------------------------------------------


def banner(results: dict[str, Any]) -> dict[str, Any]:
    """The run's status (``certify.report.results.run_status``): CERTIFIED only when the run completed and every
    candidate passed every gate it requires; NOT CERTIFIED when one failed; PARTIAL when gates were left out."""
    verdicts = list((results.get("candidates") or {}).values())
    certified = sum(v == CERTIFIED for v in verdicts)
    status = run_status(verdicts, bool(results.get("complete", False)))
    counts = results.get("counts") or {}
    notes = [] if results.get("complete", False) else ["the run did not complete"]
    notes += [f"{case}: not run here: {', '.join(gates)}" for case, gates in (results.get("left_out") or {}).items()]
    return {"status": status, "label": label(status),
            "summary": f"{certified} of {len(verdicts)} candidate{'s' if len(verdicts) != 1 else ''} certified",
            "counts": [(label(v), v, int(counts.get(v, 0))) for v in (PASS, FAIL, NOT_EVALUATED, ERROR)],
            "notes": notes}


def gate_cell(entry: Entry) -> dict[str, Any]:
    result = entry["result"]
    verdict, unit = result["verdict"], result.get("unit", "")
    value = number(result.get("value")) if verdict in (PASS, FAIL) else None
    bound, threshold = decisive_bound(result), number(result.get("threshold"))
    decided = ""
    if value is not None and threshold is not None and bound is not None:
        cmp = _relation(bound, threshold, result.get("comparison", ">="))
        decided = f"{'bound ' if result.get('interval') else ''}{charts.fmt(bound, unit)} {cmp} " \
                  f"{charts.fmt(threshold, unit)}"
    noise = host_noise(result)
    return {"gate": entry["gate"], "verdict": verdict, "label": label(verdict) + (f" ({noise})" if noise else ""),
            "value": fmt_value(value, unit), "decided": decided, "reason": result.get("reason", ""),
            "hint": result.get("hint", ""), "noise": noise}


def _relation(bound: float, threshold: float, comparison: str) -> str:
    """The operator that is true of the decisive figure: the required one when it clears, its negation if not."""
    if comparison == ">=":
        return "\u2265" if bound >= threshold else "<"
    return "\u2264" if bound <= threshold else ">"


def candidate_gate_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"case": e["case"], **gate_cell(e)} for e in sorted(entries, key=lambda e: (e["case"], e["gate"]))]


def matrix_rows(candidates: list[dict[str, Any]], gates: list[str]) -> list[dict[str, Any]]:
    rows = []
    for cand in candidates:
        cells = {c["gate"]: c for c in cand["gates"]}
        rows.append({"case": cand["case"], "anchor": cand["anchor"], "status": cand["status"],
                     "label": cand["label"], "cells": [cells.get(g) for g in gates],
                     "precision": cand.get("precision", "")})
    return rows


# --- per candidate ---------------------------------------------------------------------------------------------


def candidate_view(index: int, case: str, entries: list[Entry], latest: Latest,
                   results: dict[str, Any], thresholds: dict[str, Any]) -> dict[str, Any]:
    first = entries[0]
    status = (results.get("candidates") or {}).get(case, INCOMPLETE)
    results_by_gate = {e["gate"]: e["result"] for e in entries}
    order = {g: i for i, g in enumerate(gate_columns(entries))}
    cells = sorted((gate_cell(e) for e in entries), key=lambda c: order[c["gate"]])
    return {
        "case": case, "anchor": f"candidate-{index + 1}", "model": first.get("model", ""),
        "candidate": first.get("candidate", case), "framework": first.get("framework", ""),
        "device": first.get("device", ""), "markers": ", ".join(first.get("markers") or []),
        "board": split_case_id(case)[1],
        "status": status, "label": label(status), "precision": precisions(entries).get(case, ""),
        "gates": cells, "gate_rows": merge_same_reason(cells),
        "accuracy": accuracy_view(results_by_gate.get("accuracy"), thresholds),
        "speed": speed_view(case, results_by_gate.get("speed"), latest, thresholds),
        "memory": memory_view(case, results_by_gate.get("memory"), latest, thresholds),
    }


def merge_same_reason(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gates with the same verdict, reason and hint (e.g. all not evaluated on a host without the target
    platform) become one row naming them all, so a reason is said once."""
    merged: list[dict[str, Any]] = []
    for cell in cells:
        same = next((m for m in merged if (m["verdict"], m["reason"], m["hint"]) ==
                     (cell["verdict"], cell["reason"], cell["hint"])), None)
        if same is None or cell["verdict"] == PASS:
            merged.append({**cell, "gates": [cell["gate"]]})
        else:
            same["gates"].append(cell["gate"])
    return merged


def _interval_row(label: str, result: dict[str, Any]) -> IntervalRow | None:
    value = number(result.get("value"))
    if value is None or result.get("verdict") not in (PASS, FAIL):
        return None
    interval = result.get("interval") or [None, None]
    return IntervalRow(label, value, number(interval[0]), number(interval[1]), result["verdict"])


def _figure(result: dict[str, Any]) -> dict[str, str]:
    unit, interval = result.get("unit", ""), result.get("interval")
    return {"value": fmt_value(number(result.get("value")), unit),
            "interval": fmt_interval(interval, unit) if interval else "",
            "threshold": fmt_value(number(result.get("threshold")), unit), "verdict": result["verdict"]}


def accuracy_view(result: dict[str, Any] | None, thresholds: dict[str, Any]) -> dict[str, Any] | None:
    row = _interval_row("", result) if result else None
    if result is None or row is None:
        return None
    details = result.get("details") or {}
    facts = [("metric", str(details.get("metric", ""))),
             ("baseline", _plain(details.get("baseline"))), ("candidate", _plain(details.get("candidate"))),
             ("top-1 agreement", fmt_value(number(details.get("top1_agreement")), "%")),
             ("samples", _plain(details.get("samples")))]
    return {**_figure(result), "facts": [f for f in facts if f[1]],
            "chart": Markup(charts.retention_chart([row], number(thresholds.get("min_accuracy_retention")),
                                                   FIGURE_WIDTH))}


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def speed_view(case: str, result: dict[str, Any] | None, latest: Latest,
               thresholds: dict[str, Any]) -> dict[str, Any] | None:
    measurement = measured(latest, case, "speed")
    samples_b, samples_c = measurement.get("baseline_ns"), measurement.get("candidate_ns")
    if not samples_c:
        samples_c = measured(latest, case, "stability").get("candidate_ns")
    row = _interval_row("", result) if result else None
    if row is None and not (samples_b or samples_c):
        return None
    details = (result or {}).get("details") or {}
    facts = [("baseline p50", fmt_value(number(details.get("baseline_p50_ms")), "ms")),
             ("candidate p50", fmt_value(number(details.get("candidate_p50_ms")), "ms")),
             ("paired samples", _plain(details.get("samples"))), ("stopped", _plain(details.get("stop_reason"))),
             ("duration", fmt_value(number(details.get("duration_s")), " s")),
             ("executed on", _plain(details.get("executed_device"))), *_host_facts(details)]
    chart = charts.speedup_chart([row], number(thresholds.get("min_speedup")), FIGURE_WIDTH) if row else ""
    return {**(_figure(result) if result and row else {}), "facts": [f for f in facts if f[1]],
            "chart": Markup(chart), "latency": Markup(charts.latency_chart(samples_b, samples_c))}


def _host_facts(details: dict[str, Any]) -> list[tuple[str, str]]:
    """How the speed interval was found, how noisy the host was and what energy was measured (or why none)."""
    facts = []
    interval = details.get("interval") or {}
    if interval:
        windows = interval.get("windows")
        facts.append(("interval", f"{interval['method']}: bootstrap {fmt_interval(interval['bootstrap'], 'x')}, "
                      f"windows {fmt_interval(windows, 'x') if windows else 'too few to use'}"))
    pre = details.get("preflight") or {}
    if pre:
        widened = pre.get("widened")
        facts.append(("host noise", f"{pre['noise']} ({pre['summary']})"
                      + (f"; run widened: {widened}" if widened and widened != "nothing" else "")))
    energy = details.get("energy") or {}
    if energy.get("available"):
        base, cand = energy["baseline"], energy["candidate"]
        per = energy.get("per", "inference")
        facts.append(("energy", f"{base['joules_per_inference']:.4g} -> {cand['joules_per_inference']:.4g} J per "
                      f"{per} ({', '.join(energy.get('total_of', []))})"))
    elif energy:
        facts.append(("energy", f"not available: {energy.get('reason', 'no counter')}"))
    return facts


def memory_figures(case: str, result: dict[str, Any] | None, latest: Latest,
                   thresholds: dict[str, Any]) -> MemoryFigures | None:
    measurement = measured(latest, case, "memory")
    base, cand = measurement.get("baseline") or {}, measurement.get("candidate") or {}
    details = (result or {}).get("details") or {}
    figures = MemoryFigures(
        number(base.get("model_bytes", details.get("baseline_bytes"))),
        number(cand.get("model_bytes", details.get("candidate_bytes"))),
        number(base.get("file_bytes", details.get("baseline_file_bytes"))),
        number(cand.get("file_bytes", details.get("candidate_file_bytes"))))
    reduction = number(thresholds.get("min_memory_reduction"))
    if figures.baseline_model is not None and reduction is not None:
        figures = dataclasses.replace(figures, candidate_limit=figures.baseline_model * (1.0 - reduction))
    known = (figures.baseline_model, figures.candidate_model, figures.baseline_file, figures.candidate_file)
    return None if all(v is None for v in known) else figures


def memory_view(case: str, result: dict[str, Any] | None, latest: Latest,
                thresholds: dict[str, Any]) -> dict[str, Any] | None:
    figures = memory_figures(case, result, latest, thresholds)
    if figures is None:
        return None
    details = (result or {}).get("details") or {}
    method = details.get("method") or measured(latest, case, "memory").get(
        "candidate", {}).get("method", "")
    figure = _figure(result) if result and number(result.get("value")) is not None else {}
    return {**figure, "method": method, "chart": Markup(charts.memory_chart(figures))}


# --- across candidates -----------------------------------------------------------------------------------------


def overview_charts(entries: list[Entry], thresholds: dict[str, Any]) -> dict[str, Markup]:
    one_model = len({(e.get("model"), split_case_id(e["case"])[1]) for e in entries}) == 1  # one model, one board
    label: dict[str, str] = {e["case"]: str(e.get("candidate", e["case"]) if one_model else e["case"])
                             for e in entries}
    speed = [r for e in entries if e["gate"] == "speed" and (r := _interval_row(label[e["case"]], e["result"]))]
    accuracy = [r for e in entries
                if e["gate"] == "accuracy" and (r := _interval_row(label[e["case"]], e["result"]))]
    speed_chart = charts.speedup_chart(speed, number(thresholds.get("min_speedup"))) if speed else ""
    accuracy_chart = charts.retention_chart(accuracy, number(thresholds.get("min_accuracy_retention"))) \
        if accuracy else ""
    return {"speed": Markup(speed_chart), "accuracy": Markup(accuracy_chart)}


def _pareto_point(case: str, rows: list[Entry], latest: Latest) -> ParetoPoint | str:
    """A candidate's point, or why it cannot be plotted."""
    results = {e["gate"]: e["result"] for e in rows}
    speed, accuracy = (_interval_row("", results.get(g) or {}) for g in ("speed", "accuracy"))
    missing = [g for g, r in (("speed", speed), ("accuracy", accuracy)) if r is None]
    if speed is None or accuracy is None:
        return f"no {' or '.join(missing)} measurement"
    figures = memory_figures(case, results.get("memory"), latest, {})
    memory = figures.candidate_model if figures else None
    return ParetoPoint(rows[0].get("candidate", case), speed.value, accuracy.value, memory)


def pareto_views(entries: list[Entry], latest: Latest,
                 thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """One Pareto chart per model and board (candidates of one model share a baseline, so their ratios compare)."""
    models: dict[str, dict[str, list[Entry]]] = defaultdict(dict)
    for case, rows in sorted(by_case(entries).items()):
        board = split_case_id(case)[1]
        models[str(rows[0].get("model", "")) + (f" on {board}" if board else "")][case] = rows
    views = []
    for model, cases in models.items():
        points, skipped = [], []
        for case, rows in cases.items():
            point = _pareto_point(case, rows, latest)
            if isinstance(point, str):
                skipped.append((rows[0].get("candidate", case), point))
            else:
                points.append(point)
        chart = charts.pareto_chart(points, number(thresholds.get("min_speedup")),
                                    number(thresholds.get("min_accuracy_retention")))
        views.append({"model": model, "chart": Markup(chart), "skipped": skipped,
                      "dominated": sorted(charts.dominated(points))})
    return views


def not_evaluated_view(entries: list[Entry]) -> list[dict[str, str]]:
    return [{"case": case, "gates": ", ".join(gate_order(gates)), "reason": reason}
            for (case, reason), gates in sorted(not_evaluated_groups(entries).items())]


STAGE_GATES = BUILTIN_REGISTRY.where("stage_figure")


def stages_view(entries: list[Entry], results: dict[str, Any],
                latest: Latest) -> list[dict[str, str]]:
    """One row per candidate made by a recipe, in plan order (sources before what is made from them): how it
    was made and what that step bought (accuracy retention, speedup, memory reduction, size on disk)."""
    made = {f"{m['name']}/{c['name']}": c.get("made_by") or {} for m in results.get("models") or []
            for c in m.get("candidates", [])}
    results_by = {(e["case"], e["gate"]): e["result"] for e in entries}
    rows, seen = [], set()
    for entry in entries:
        recipe, case = entry.get("recipe"), entry["case"]
        if not isinstance(recipe, dict) or case in seen:
            continue
        seen.add(case)
        made_by = made.get(split_case_id(case)[0]) or {}  # a case on a board: its candidate's build
        versions = made_by.get("versions") or {}
        size = (measured(latest, case, "memory").get("candidate") or {}).get("file_bytes")
        summary = (made_by.get("facts") or {}).get("summary")
        rows.append({"case": case, "stage": str(recipe.get("stage", "")),
                     "made": f"{recipe.get('tool')} {recipe.get('method')} from {recipe.get('from')}"
                             + (f": {summary}" if summary else ""),
                     "params": _recipe_text(recipe.get("params") or {}),
                     "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
                     **{g: _gate_figure(results_by.get((case, g))) for g in STAGE_GATES},
                     "size": _size_text(size)})
    order = {case: i for i, case in enumerate(made)}  # plan order: a recipe's source comes before it
    return sorted(rows, key=lambda row: order.get(split_case_id(row["case"])[0], len(order)))


def _size_text(size: Any) -> str:
    value = number(size)
    return "-" if value is None else charts.human_bytes(value)


def _gate_figure(result: dict[str, Any] | None) -> str:
    if not result or number(result.get("value")) is None:
        return "-" if not result else label(result["verdict"])
    return f"{value_text(float(result['value']), result.get('unit'))} ({label(result['verdict'])})"


def _recipe_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- environment and signature ---------------------------------------------------------------------------------


def _host_value(key: str, value: Any) -> str:
    if key.endswith("_bytes") and number(value) is not None:
        return charts.human_bytes(float(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _threshold_text(name: str, value: Any) -> str:
    amount = number(value)
    return str(value) if amount is None else charts.fmt(amount, THRESHOLD_UNIT.get(name, ""))


def environment_view(results: dict[str, Any]) -> dict[str, Any]:
    host: dict[str, Any] = results.get("host") or {}
    plan: dict[str, Any] = results.get("plan") or {}
    policy: dict[str, Any] = plan.get("policy") or {}
    thresholds: dict[str, Any] = policy.get("thresholds") or {}
    started, finished = number(results.get("started")), number(results.get("finished"))
    return {
        "run_id": results.get("run_id", "unknown"), "schema": results.get("schema", ""),
        "started": utc_iso(started), "finished": utc_iso(finished),
        "duration": f"{finished - started:.1f} s" if started is not None and finished is not None else "",
        "complete": bool(results.get("complete", False)), "fingerprint": host.get("fingerprint", "unknown"),
        "host": [(k, _host_value(k, v)) for k, v in sorted(host.items()) if k != "fingerprint"],
        "packages": sorted((results.get("packages") or {}).items()),
        "plan": {"name": plan.get("name", ""), "source": plan.get("source", ""), "digest": plan.get("digest", "")},
        "policy": {"name": policy.get("name", ""), "digest": policy.get("digest", ""),
                   "thresholds": [(k, _threshold_text(k, v)) for k, v in sorted(thresholds.items())],
                   "rule": DECISION_RULE.get(str(thresholds.get("decision")), "the policy's decision rule"),
                   "confidence": _threshold_text("confidence", thresholds.get("confidence", 0.95))},
    }


def _model_file(model: str, role: str, ref: dict[str, Any]) -> dict[str, str]:
    where = " on ".join(str(v) for v in (ref.get("framework"), ref.get("device")) if v)
    files = ref.get("files") or []
    return {"model": model, "role": role, "name": str(ref.get("name") or ref.get("source") or ""), "where": where,
            "sha256": str(ref.get("sha256") or ref.get("digest_error") or "not recorded"),
            "files": f"{len(files)} files" if len(files) > 1 else ""}


def models_view(results: dict[str, Any]) -> list[dict[str, str]]:
    """Every model file (baseline, candidates) and dataset of the plan with its digest."""
    rows = []
    for model in results.get("models") or []:
        name = str(model.get("name", ""))
        rows.append(_model_file(name, "baseline", model.get("baseline") or {}))
        rows += [_model_file(name, "candidate", ref) for ref in model.get("candidates") or []]
        if model.get("dataset"):
            rows.append(_model_file(name, "dataset", model["dataset"]))
    return rows


def signature_view(signature: dict[str, Any] | None) -> dict[str, Any]:
    if signature is None:
        return {"state": "unknown", "reason": "no signing information was given to the report generator"}
    if not signature.get("signed"):
        return {"state": "unsigned", "certificate": signature.get("certificate") or "",
                "reason": str(signature.get("reason_unsigned") or "no reason recorded").rstrip(".")}
    return {"state": "signed", "keyid": signature.get("keyid") or "unknown",
            "dev_key": bool(signature.get("dev_key")), "certificate": signature.get("certificate") or "",
            "verify_command": signature.get("verify_command") or ""}
