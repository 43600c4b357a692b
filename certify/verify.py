"""``certify verify``: the release gate. A certificate passes only when every check passes; each refusal
names its check and reason. A certificate whose signature does not verify is not read any further.

Strict by default: the policy each candidate was judged by is compared with the built-in policy of its name (or
with ``--policy``), the certificate must be younger than ``DEFAULT_MAX_AGE_DAYS`` and never from the future, every
gate's verdict must follow from its recorded figures under its policy's decision rule, the subjects must be the
certified candidates with their digests, a certified candidate must have passed every gate it requires, and a
required gate measured on a too-noisy host is refused unless ``allow_noisy``.

Where it ran: the candidates verified (every one, or those of the ``models`` given) can be narrowed to those measured
on a board of the lab named in ``boards`` and/or whose detected platform markers and devices include every one of
``host_markers`` (a certificate without boards: its host's). Nothing left is a refusal naming the boards or host the
certificate holds. A board the lab refused (its hardware contradicts its tags) is never accepted."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from certify.attest import UnreadableJSON, VerificationError, load_public_key, open_envelope, read_json
from certify.digests import model_digest
from certify.errors import CertifyError
from certify.gates.registry import GATE_NAMES
from certify.plan.load import load_policy
from certify.policy import DECISION_RULES, POLICIES, Policy, weaker_points
from certify.report.certificate import parse_iso, required_gates_missing
from certify.report.lab import boards_of, host_markers
from certify.verdict import CERTIFIED, FAIL, PASS, decide, format_value

CLOCK_SKEW_S = 300.0
DEFAULT_MAX_AGE_DAYS = 30.0
# the built-in gates that record one policy threshold as theirs (``threshold = policy.<field>``) and compare their
# value with it in this direction: a pass needs the value to clear it (stability, stress and fallback also judge
# other figures, so their value clearing it is necessary, not sufficient)
GATE_THRESHOLDS = {"accuracy": ("min_accuracy_retention", ">="), "speed": ("min_speedup", ">="),
                   "memory": ("min_memory_reduction", ">="), "stability": ("max_p99_over_p50", "<="),
                   "stress": ("max_load_p99_ratio", "<="), "fallback": ("max_recovery_s", "<=")}
INTERVAL_GATES = ("accuracy", "speed", "memory")  # decide on a confidence interval, so always record one
# decided by their one figure alone: a fail the figures pass is as wrong as the reverse (accuracy also fails a
# recipe that changed nothing, whatever its retention)
DECIDED_BY_FIGURE = ("speed", "memory")
TOO_NOISY = "too_noisy"
MALFORMED = (KeyError, TypeError, AttributeError, ValueError, IndexError)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Request:
    certificate: Path
    keys: list[Path]
    models: list[Path] = field(default_factory=list)
    policy: str | None = None  # None: each candidate's policy against the built-in policy of its name
    require: list[str] | None = None  # None: the gates each candidate's certificate entry says it had to pass
    max_age_days: float | None = DEFAULT_MAX_AGE_DAYS  # None: no limit (a finish in the future is still refused)
    allow_dev_key: bool = False
    allow_noisy: bool = False  # accept a required gate measured on a too-noisy host
    host_markers: list[str] = field(default_factory=list)  # measured on a board (or host) with each of these markers
    boards: list[str] = field(default_factory=list)  # measured on one of these boards of the lab

    @property
    def narrowed(self) -> bool:
        return bool(self.host_markers or self.boards)


@dataclass
class Outcome:
    checks: list[Check] = field(default_factory=list)
    keyid: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def to_dict(self) -> dict[str, Any]:
        return {"verified": self.ok, "keyid": self.keyid,
                "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
                "refusals": [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]}


def verify(req: Request, now: float | None = None) -> Outcome:
    """Raises CertifyError only for unusable arguments (a missing key file); every trust failure is a Check."""
    trusted = dict(load_public_key(k) for k in req.keys)
    if not trusted:
        raise CertifyError("no trusted key given", hint="pass the signer's public key with --key PUB")
    required_policy = load_policy(req.policy) if req.policy else None
    out = Outcome()
    try:
        envelope = read_json(req.certificate, "certificate")
    except UnreadableJSON as exc:
        out.add("certificate", False, exc.message)
        return out
    if not isinstance(envelope, dict) or "payload" not in envelope:
        out.add("signature", False, "not a signed certificate (no DSSE envelope): it may be an unsigned statement")
        return out
    try:
        statement, out.keyid = open_envelope(envelope, trusted)
    except VerificationError as exc:
        out.add(exc.check, False, exc.message)
        return out
    out.add("signature", True, f"signed by trusted key {out.keyid}")
    try:
        _check_statement(out, statement, req, time.time() if now is None else now, required_policy)
    except MALFORMED as exc:  # signed, but not as this tool writes a certificate
        out.add("statement", False, f"the signed statement is malformed ({type(exc).__name__}: {exc})")
    return out


def _check_statement(out: Outcome, statement: dict[str, Any], req: Request, now: float,
                     required_policy: Policy | None) -> None:
    pred = statement["predicate"]
    _check_run(out, pred, req, now)
    _check_subjects(out, statement)
    for cand in _select(out, statement, req):
        _check_candidate(out, cand, req, required_policy)
        _check_board(out, cand, pred)


def _check_run(out: Outcome, pred: dict[str, Any], req: Request, now: float) -> None:
    if pred.get("dev_key"):
        out.add("key", req.allow_dev_key, "signed with a throwaway development key (certify demo)"
                + ("; allowed by --allow-dev-key" if req.allow_dev_key else "; never trust it for a release"))
    run = pred.get("run", {})
    out.add("complete", bool(run.get("complete")), "the run finished" if run.get("complete")
            else "the run was interrupted or incomplete")
    _check_fresh(out, str(run.get("finished")), req.max_age_days, now)


def _check_fresh(out: Outcome, finished: str, max_age_days: float | None, now: float) -> None:
    """Made at most ``max_age_days`` ago (None: any age), and never in the future beyond the clock skew."""
    try:
        age = now - parse_iso(finished)
    except ValueError:
        out.add("fresh", False, f"unreadable finish time {finished!r}")
        return
    if age < -CLOCK_SKEW_S:
        out.add("fresh", False, f"finished {-age / 3600:.1f} h in the future ({finished}): check the signer's clock")
        return
    days = max(age, 0.0) / 86400
    if max_age_days is None:
        out.add("fresh", True, f"made {days:.1f} days ago ({finished}), no max age (--max-age none)")
    else:
        out.add("fresh", days <= max_age_days, f"made {days:.1f} days ago ({finished}), max age {max_age_days:g} days")


def _check_subjects(out: Outcome, statement: dict[str, Any]) -> None:
    """Every subject is a certified candidate of the predicate, with that candidate's digest (a certified candidate
    missing from the subjects is certified for nobody, not a trust problem)."""
    by_case = {c.get("case"): c for c in statement["predicate"].get("candidates", []) if isinstance(c, dict)}
    problems = []
    for subject in statement["subject"]:
        name, digest = _subject(subject)
        cand = by_case.get(name)
        if cand is None:
            problems.append(f"subject {name!r} is no candidate of the certificate")
        elif cand.get("verdict") != CERTIFIED:
            problems.append(f"subject {name} is a candidate whose verdict is {cand.get('verdict')}, not certified")
        elif cand.get("sha256") != digest:
            problems.append(f"subject {name} has digest {str(digest)[:16]}... but its candidate has "
                            f"{str(cand.get('sha256'))[:16]}...")
    if statement["subject"] or problems:
        out.add("subjects", not problems, "; ".join(problems) or
                f"{len(statement['subject'])} subject(s), each a certified candidate with its digest")


def _subject(subject: Any) -> tuple[Any, Any]:
    if not isinstance(subject, dict):
        return None, None
    digest = subject.get("digest")
    return subject.get("name"), digest.get("sha256") if isinstance(digest, dict) else None


def _select(out: Outcome, statement: dict[str, Any], req: Request) -> list[dict[str, Any]]:
    """The candidates this verification is about: those measured where ``req`` asks (everywhere by default), of
    them the given model files, else every one certified or not."""
    pred = statement["predicate"]
    everything = [c for c in pred.get("candidates", []) if isinstance(c, dict)]
    candidates = _measured_where_asked(out, pred, everything, req)
    subjects = [_subject(s) for s in statement["subject"]]
    if req.narrowed and not candidates:
        return []
    if not req.models:
        if not statement["subject"]:
            out.add("subject", False, "the certificate certifies no model")
        elif req.narrowed and not any((c.get("case"), c.get("sha256")) in subjects for c in candidates):
            out.add("subject", False, f"no candidate measured on {_asked(pred, req)} is certified")
        return candidates
    return [c for path in req.models for c in _by_model(out, path, candidates, everything, subjects,
                                                         _asked(pred, req))]


def _by_model(out: Outcome, path: Path, candidates: list[dict[str, Any]], everything: list[dict[str, Any]],
              subjects: list[tuple[Any, Any]], asked: str) -> list[dict[str, Any]]:
    """The candidates that are this model file: its certified ones, else the first (to say why it is not)."""
    try:
        digest = model_digest(path).sha256
    except (CertifyError, OSError) as exc:
        out.add("model", False, f"{path}: {exc}")
        return []
    matching = [c for c in candidates if c.get("sha256") == digest]
    certified = [c for c in matching if (c.get("case"), digest) in subjects]
    elsewhere = [str(c.get("case")) for c in everything if c.get("sha256") == digest]
    if certified:
        out.add("model", True, f"{path} is certified subject {', '.join(str(c['case']) for c in certified)} "
                f"(sha256 {digest[:16]}...)")
    elif matching:
        out.add("model", False, f"{path} is candidate {matching[0].get('case')} but its verdict is "
                f"{matching[0].get('verdict')}" + ("" if matching[0].get("verdict") != CERTIFIED
                                                   else " and it is not a subject of the certificate"))
    elif elsewhere:
        out.add("model", False, f"{path} is candidate {', '.join(elsewhere)}, none measured on {asked}")
    else:
        names = ", ".join(str(n) for n, _ in subjects) or "none"
        out.add("model", False, f"{path} (sha256 {digest[:16]}...) matches no subject of the certificate; "
                f"it is not the file that was certified (certified: {names})")
    return certified or matching[:1]


@dataclass(frozen=True)
class Where:
    """What measured a candidate, as its certificate describes it: a board of the lab, or the certificate's host
    (the machine that ran the session)."""

    board: str | None
    markers: tuple[str, ...]  # its detected platform markers and devices
    refused: str = ""  # why the lab refused the board (its detected hardware contradicts its tags)
    lost: str = ""
    known: bool = True  # False: a board the certificate's ``boards`` does not describe

    @property
    def trusted(self) -> bool:
        return self.known and not self.refused

    def describe(self) -> str:
        """'nuc1 (intel, cpu)', 'pi (arm, cpu; refused: ...)', 'this host (amd, cpu)'."""
        notes = [", ".join(self.markers) or "no marker", *(f"{k}: {v}" for k, v in
                                                          (("refused", self.refused), ("lost", self.lost)) if v)]
        return f"{self.board or 'this host'} ({'; '.join(notes)})"


def _boards(pred: dict[str, Any]) -> dict[str, Where]:
    """The lab's boards by name ({} for a certificate of a local run)."""
    return {str(b.get("name")): Where(str(b.get("name")), tuple(host_markers(b.get("host"))),
                                      str(b.get("refused") or ""), str(b.get("lost") or "")) for b in boards_of(pred)}


def _where(pred: dict[str, Any], cand: dict[str, Any], boards: dict[str, Where]) -> Where:
    board = cand.get("board")
    if board is None:
        return Where(None, tuple(host_markers(pred.get("host"))))
    return boards.get(str(board)) or Where(str(board), (), known=False)


def _measured_where_asked(out: Outcome, pred: dict[str, Any], candidates: list[dict[str, Any]],
                          req: Request) -> list[dict[str, Any]]:
    """The candidates measured on a board (or host) that ``req`` asks for; a refused board never is one."""
    if not req.narrowed:
        return candidates
    boards = _boards(pred)
    where = {id(c): _where(pred, c, boards) for c in candidates}
    kept = [c for c in candidates if _is_asked(where[id(c)], req)]
    if not kept:
        held = [w.describe() for w in boards.values()]
        if not boards or any(c.get("board") is None for c in candidates):
            held.append(Where(None, tuple(host_markers(pred.get("host")))).describe())
        out.add("host", False, f"no candidate of this certificate was measured on {_asked(pred, req)}: it holds "
                + ", ".join(held))
    else:
        places = sorted({where[id(c)].describe() for c in kept})
        out.add("host", True, f"{len(kept)} candidate(s) measured on {_asked(pred, req)}: {', '.join(places)}")
    return kept


def _is_asked(where: Where, req: Request) -> bool:
    return (where.trusted and (not req.boards or where.board in req.boards)
            and all(m in where.markers for m in req.host_markers))


def _asked(pred: dict[str, Any], req: Request) -> str:
    """'a board named nuc1 with marker 'intel'', 'a host with markers 'arm' and 'gpu''."""
    text = "a board" if pred.get("boards") else "a host"
    if req.boards:
        text += " named " + " or ".join(req.boards)
    if req.host_markers:
        text += f" with marker{'s' * (len(req.host_markers) > 1)} " + " and ".join(repr(m) for m in req.host_markers)
    return text


def _check_board(out: Outcome, cand: dict[str, Any], pred: dict[str, Any]) -> None:
    """A candidate measured on a board the lab refused, or on a board the certificate does not describe, is
    refused whatever its verdict."""
    if cand.get("board") is None:
        return
    boards = _boards(pred)
    where = _where(pred, cand, boards)
    if not where.known:
        out.add("board", False, f"{cand['case']}: measured on board {where.board}, which is not among the "
                f"certificate's boards ({', '.join(boards) or 'none'})")
    elif where.refused:
        out.add("board", False, f"{cand['case']}: measured on board {where.board}, which the lab refused: "
                f"{where.refused}")


def required_of(cand: dict[str, Any]) -> list[str]:
    """The gates a certificate's candidate had to pass: as recorded with it and its policy's required gates (the
    harness records the policy's and the project's own), else every built-in gate (a certificate from before
    policies named them)."""
    policy = cand.get("policy") or {}
    recorded = [*(cand.get("required_gates") or []), *(policy.get("thresholds", {}).get("required_gates") or [])]
    return list(dict.fromkeys(str(g) for g in recorded)) if recorded else list(GATE_NAMES)


def _check_candidate(out: Outcome, cand: dict[str, Any], req: Request, required_policy: Policy | None) -> None:
    name = cand["case"]
    _check_policy(out, cand, required_policy)
    gates = req.require if req.require is not None else required_of(cand)
    missing = required_gates_missing(cand, gates)
    out.add("gates", not missing, f"{name}: " + (f"required gates not passed: {'; '.join(missing)}" if missing
                                                  else f"passed {', '.join(gates)}"))
    if cand.get("verdict") == CERTIFIED and (unmet := required_gates_missing(cand, required_of(cand))):
        out.add("certified", False, f"{name}: recorded certified, but required gates not passed: {'; '.join(unmet)}")
    _check_verdicts(out, cand)
    _check_noise(out, cand, gates, req.allow_noisy)
    if cand.get("reason"):
        out.add("candidate", False, f"{name}: {cand['reason']}")


def _check_policy(out: Outcome, cand: dict[str, Any], required: Policy | None) -> None:
    """The candidate's policy against ``--policy``, else against the built-in policy of its name (a policy with
    overrides against its base)."""
    recorded = cand.get("policy") or {}
    name = str(recorded.get("name"))
    if required is not None:
        against = repr(required.name)
    elif (required := POLICIES.get(name.removesuffix("+overrides"))) is not None:
        against = f"the built-in {required.name!r}"
    else:
        out.add("policy", False, f"{cand['case']}: policy {name!r} is not a built-in policy ({', '.join(POLICIES)}): "
                "pass --policy FILE to accept a custom policy explicitly")
        return
    weaker = weaker_points(recorded.get("thresholds") or {}, required)
    out.add("policy", not weaker, f"{cand['case']}: policy {name!r} " + (
        f"is weaker than {against}: {'; '.join(weaker)}" if weaker else f"is at least as strict as {against}"))


def _check_verdicts(out: Outcome, cand: dict[str, Any]) -> None:
    """Every gate's recorded verdict against its recorded figures, threshold and comparison."""
    thresholds = (cand.get("policy") or {}).get("thresholds") or {}
    decision = thresholds.get("decision", "lower_bound")
    if decision not in DECISION_RULES:
        out.add("verdicts", False, f"{cand['case']}: unknown decision rule {decision!r} (known: "
                f"{', '.join(DECISION_RULES)})")
        return
    gates = cand.get("gates") or {}
    problems = [p for gate, result in gates.items() for p in _contradictions(gate, result, thresholds, decision)]
    out.add("verdicts", not problems, f"{cand['case']}: " + ("; ".join(problems) or
            f"every verdict with figures follows from them (decision {decision})"))


def _contradictions(gate: str, result: dict[str, Any], thresholds: dict[str, Any], decision: str) -> list[str]:
    """Where one gate's record contradicts itself or its policy ([] when it holds, or has no figures to check)."""
    verdict, value, threshold = result.get("verdict"), result.get("value"), result.get("threshold")
    if verdict not in (PASS, FAIL) or not _number(value) or not _number(threshold):
        return []  # not judged here, or decided on several figures (robustness, security): nothing to re-derive
    field_name, direction = GATE_THRESHOLDS.get(gate, (None, result.get("comparison")))
    comparison, unit = result.get("comparison"), str(result.get("unit") or "")
    if comparison not in (">=", "<="):
        return [f"{gate} compares {comparison!r}, neither >= nor <="]
    if comparison != direction:
        return [f"{gate} compares {comparison!r}, but it passes when its value is {direction} its threshold"]
    found = []
    if field_name is not None and _number(want := thresholds.get(field_name)) and threshold != want:
        found.append(f"{gate} threshold {format_value(threshold, unit)} is not its policy's {field_name} "
                     f"{format_value(want, unit)}")
    interval = _interval(result.get("interval"))
    if interval is None and gate in INTERVAL_GATES:
        return [*found, f"{gate} recorded {verdict} without its confidence interval"]
    derived = decide(gate, gate, value, interval, threshold, policy=Policy("recorded", decision=decision),
                     higher_is_better=comparison == ">=").verdict
    if derived != verdict and (verdict == PASS or gate in DECIDED_BY_FIGURE):
        ci = f" (interval {format_value(interval[0], unit)} to {format_value(interval[1], unit)})" if interval else ""
        found.append(f"{gate} recorded {verdict} but its figures say {derived}: value {format_value(value, unit)}"
                     f"{ci} vs threshold {comparison} {format_value(threshold, unit)}, decision {decision}")
    return found


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _check_noise(out: Outcome, cand: dict[str, Any], required: list[str], allow_noisy: bool) -> None:
    """A required gate that passed while the host was too noisy (``measure.noise = 'warn'`` let its verdict stand):
    refused unless ``allow_noisy``. One the harness did not judge is an ERROR, refused as not passed already."""
    noisy = []
    for gate in required:
        result = (cand.get("gates") or {}).get(gate, {})
        conditions = result.get("conditions")
        if result.get("verdict") == PASS and isinstance(conditions, dict) and conditions.get("noise") == TOO_NOISY:
            share = conditions.get("others_cpu_share")
            held = f", other processes held {share:.0%} of the cores" if _number(share) else ""
            noisy.append(f"{gate} (noise option {conditions.get('noise_option')!r}{held})")
    if noisy:
        out.add("noise", allow_noisy, f"{cand['case']}: measured on a too noisy host: {'; '.join(noisy)}"
                + ("; accepted by --allow-noisy" if allow_noisy else "; rerun on a quiet host, or pass "
                   "--allow-noisy to accept it"))
