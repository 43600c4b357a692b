"""The certificate's content: an in-toto Statement whose subjects are the certified candidate models (by digest)
and whose predicate (``certify.attest.PREDICATE_TYPE``) holds everything a release job needs to trust it::

    verdict            certified | not_certified | partial | incomplete (the run as a whole)
    run                id, started, finished (UTC ISO 8601), complete
    harness            name and version of this tool
    plan, policy       name, source, digest; the policy's thresholds
    host, packages     the host fingerprint and description (the controller: the machine that ran pytest); every
                       installed distribution's version
    boards[]           a lab run's boards as results.json ``boards`` holds them (name, place, tags, address,
                       fingerprint, host detected on the board, packages, wait_s, refused, lost); [] for a local run
    models[]           per model: metric, baseline and dataset with their digests
    candidates[]       per candidate (case): digest and files, framework, device asked for and devices that really ran,
                       the board that measured it (None: this host), its policy, the gates it had to pass
                       (required_gates), every gate's verdict/value/interval/threshold/reason and the host's
                       conditions while it was measured, and its verdict
    not_evaluated[]    case, gates and the reason they could not run here
    dev_key            true when signed with a throwaway development key (never trust it for a release)

A case measured on a board of the lab has the id ``model/candidate@board`` (``certify.records.split_case_id``): the
same model file certified on two boards is two candidates and two subjects (``m/int8@nuc1``, ``m/int8@pi``) with one
digest.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from certify import DISTRIBUTION, __version__
from certify.attest import PREDICATE_TYPE, STATEMENT_TYPE
from certify.digests import file_sha256, model_digest
from certify.errors import CertifyError
from certify.gates.registry import GATE_NAMES
from certify.plan import ModelRef, Plan
from certify.records import EvidenceRecord, split_case_id
from certify.report.results import candidate_verdicts, not_evaluated_groups, precisions, run_status
from certify.verdict import CERTIFIED, NOT_CERTIFIED, NOT_EVALUATED

GATE_FIELDS = ("verdict", "value", "interval", "threshold", "comparison", "unit", "reason")


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _ref(ref: ModelRef) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": ref.name, "path": str(ref.path), "framework": ref.framework,
                             "device": ref.device, "platforms": list(ref.platforms)}
    try:
        entry.update(model_digest(ref.file).to_dict())
    except (CertifyError, OSError) as exc:
        entry["digest_error"] = str(exc)
    return entry


def describe_models(plan: Plan, records: list[EvidenceRecord]) -> list[dict[str, Any]]:
    """Every model file of the plan with its digest, as found at the end of the run. A candidate made by a recipe
    is described by what its build made, as the evidence records it (the artifact measured and how it was made),
    never by planning the build again."""
    built = {split_case_id(r["case"])[0]: r for r in records if r.get("candidate_path")}  # the newest one wins
    out = []
    for model in plan.models:
        candidates = []
        for cand in model.candidates:
            record = built.get(f"{model.name}/{cand.name}")
            ref = replace(cand, path=Path(str(record["candidate_path"]))) if record and cand.recipe else cand
            candidates.append({**_ref(ref), "made_by": record.get("made_by") if record else None})
        data = model.dataset
        dataset: dict[str, Any] = {"source": str(data.path) if data.path else data.loader}
        if data.path is not None and data.path.is_file():
            dataset["sha256"] = file_sha256(data.path)
        out.append({"name": model.name, "metric": model.metric, "baseline": _ref(model.baseline),
                    "dataset": dataset, "candidates": candidates})
    return out


def _changed_during_run(case: str, current: str | None, records: list[EvidenceRecord]) -> bool:
    seen = {r.get("digests", {}).get("candidate") for r in records if r.get("case") == case}
    seen.discard(None)
    return bool(seen) and seen != {current}


def _executed(case: str, records: list[EvidenceRecord]) -> list[str]:
    """The devices that really ran the candidate, as its measurements recorded them."""
    found = set()
    for r in records:
        if r.get("case") != case:
            continue
        m = r.get("measurement") or {}
        for side in (m.get("candidate_where"), m.get("candidate")):
            value = side.get("executed_device") if isinstance(side, dict) else side
            if isinstance(value, str) and value:
                found.add(value)
    return sorted(found)


def _candidates(results: dict[str, Any], records: list[EvidenceRecord]) -> list[dict[str, Any]]:
    verdicts = results.get("candidates") or candidate_verdicts(results["cases"])
    required = results.get("required") or {}
    refs = {f"{m['name']}/{c['name']}": c for m in results.get("models", []) for c in m["candidates"]}
    gates: dict[str, dict[str, Any]] = defaultdict(dict)
    policies: dict[str, Any] = {}
    for entry in results["cases"]:
        gate = gates[entry["case"]][entry["gate"]] = {k: entry["result"].get(k) for k in GATE_FIELDS}
        conditions = (entry["result"].get("details") or {}).get("conditions")
        if conditions:  # the host's noise while a timed gate measured (certify.measure.preflight.conditions)
            gate["conditions"] = conditions
    for r in records:
        policies[r["case"]] = r.get("policy")
    out = []
    for case in sorted(verdicts):
        pair, board = split_case_id(case)
        ref = refs.get(pair, {})
        entry = {"case": case, **{k: ref.get(k) for k in ("name", "path", "framework", "device", "platforms",
                                                          "sha256", "files", "made_by")},
                 "model": pair.split("/", 1)[0], "board": board, "executed_devices": _executed(case, records),
                 "policy": policies.get(case) or results["plan"]["policy"], "gates": gates[case],
                 "precision": precisions(results["cases"]).get(case), "verdict": verdicts[case],
                 "required_gates": list(required.get(case, GATE_NAMES))}
        if not ref.get("sha256"):
            entry.update(verdict=NOT_CERTIFIED, reason=f"the model file could not be digested: "
                         f"{ref.get('digest_error', 'not in the plan')}")
        elif _changed_during_run(case, ref["sha256"], records):
            entry.update(verdict=NOT_CERTIFIED, reason="the model file changed while it was being certified")
        out.append(entry)
    return out


def build_statement(results: dict[str, Any], records: list[EvidenceRecord], *, dev_key: bool = False
                    ) -> dict[str, Any]:
    candidates = _candidates(results, records)
    not_evaluated = [{"case": case, "gates": sorted(g), "reason": reason}
                     for (case, reason), g in not_evaluated_groups(results["cases"]).items()]
    predicate = {
        "verdict": run_status([c["verdict"] for c in candidates], bool(results.get("complete"))),
        "run": {"id": results["run_id"], "started": iso(results["started"]), "finished": iso(results["finished"]),
                "complete": bool(results.get("complete"))},
        "harness": {"name": DISTRIBUTION, "version": __version__},
        "plan": {k: results["plan"].get(k) for k in ("name", "source", "digest")},
        "policy": results["plan"]["policy"], "host": results["host"], "packages": results["packages"],
        "boards": list(results.get("boards") or []),
        "models": [{k: m[k] for k in ("name", "metric", "baseline", "dataset")} for m in results.get("models", [])],
        "candidates": candidates, "not_evaluated": not_evaluated, "dev_key": dev_key,
    }
    subjects = [{"name": c["case"], "digest": {"sha256": c["sha256"]}, "annotations": {"path": c["path"]}}
                for c in candidates if c["verdict"] == CERTIFIED and results.get("complete")]  # (never unfinished)
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def required_gates_missing(candidate: dict[str, Any], required: list[str]) -> list[str]:
    """The required gates a candidate did not pass ('not evaluated' and absent count as not passed), grouped so
    that a reason shared by several gates is said once."""
    groups: dict[str, list[str]] = defaultdict(list)
    for gate in required:
        result = candidate["gates"].get(gate)
        if result is None:
            groups["not run"].append(gate)
        elif result["verdict"] != "pass":
            word = "not evaluated" if result["verdict"] == NOT_EVALUATED else result["verdict"]
            groups[f"{word}: {result['reason']}"].append(gate)
    return [f"{', '.join(gates)} ({why})" for why, gates in groups.items()]
