"""``certify verify``: the release gate. A certificate passes only when every check passes; each refusal
names its check and reason. A certificate whose signature does not verify is not read any further."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.attest import VerificationError, load_public_key, open_envelope, read_json
from certify.digests import model_digest
from certify.errors import CertifyError
from certify.gates.registry import GATE_NAMES
from certify.plan.load import load_policy
from certify.policy import weaker_points
from certify.report.certificate import parse_iso, required_gates_missing

CLOCK_SKEW_S = 300.0


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
    policy: str | None = None
    require: list[str] | None = None  # None: the gates each candidate's certificate entry says it had to pass
    max_age_days: float | None = None
    allow_dev_key: bool = False


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
    envelope = read_json(req.certificate, "certificate")
    if not isinstance(envelope, dict) or "payload" not in envelope:
        out.add("signature", False, "not a signed certificate (no DSSE envelope): it may be an unsigned statement")
        return out
    try:
        statement, out.keyid = open_envelope(envelope, trusted)
    except VerificationError as exc:
        out.add(exc.check, False, exc.message)
        return out
    out.add("signature", True, f"signed by trusted key {out.keyid}")
    pred = statement["predicate"]
    _check_run(out, pred, req, time.time() if now is None else now)
    selected = _select(out, statement, req.models)
    for cand in selected:
        _check_candidate(out, cand, req.require, required_policy)
    return out


def _check_run(out: Outcome, pred: dict[str, Any], req: Request, now: float) -> None:
    if pred.get("dev_key"):
        out.add("key", req.allow_dev_key, "signed with a throwaway development key (certify demo)"
                + ("; allowed by --allow-dev-key" if req.allow_dev_key else "; never trust it for a release"))
    run = pred.get("run", {})
    out.add("complete", bool(run.get("complete")), "the run finished" if run.get("complete")
            else "the run was interrupted or incomplete")
    if req.max_age_days is None:
        return
    try:
        age = now - parse_iso(str(run.get("finished")))
    except ValueError:
        out.add("fresh", False, f"unreadable finish time {run.get('finished')!r}")
        return
    if age < -CLOCK_SKEW_S:
        out.add("fresh", False, f"finished {-age / 3600:.1f} h in the future: check the signer's clock")
    else:
        days = max(age, 0.0) / 86400
        out.add("fresh", days <= req.max_age_days,
                f"made {days:.1f} days ago ({run.get('finished')}), max age {req.max_age_days:g} days")


def _select(out: Outcome, statement: dict[str, Any], models: list[Path]) -> list[dict[str, Any]]:
    """The candidates this verification is about: the given model files, else every candidate certified or not."""
    candidates = statement["predicate"].get("candidates", [])
    if not models:
        if not statement["subject"]:
            out.add("subject", False, "the certificate certifies no model")
        return list(candidates)
    by_case = {c["case"]: c for c in candidates}
    by_digest = {c.get("sha256"): c for c in candidates}
    subjects = {s.get("digest", {}).get("sha256"): s.get("name") for s in statement["subject"]}
    selected = []
    for path in models:
        try:
            digest = model_digest(path).sha256
        except (CertifyError, OSError) as exc:
            out.add("model", False, f"{path}: {exc}")
            continue
        if digest in subjects:
            out.add("model", True, f"{path} is certified subject {subjects[digest]} (sha256 {digest[:16]}...)")
            selected.append(by_case[subjects[digest]])
        elif digest in by_digest:
            cand = by_digest[digest]
            out.add("model", False, f"{path} is candidate {cand['case']} but its verdict is {cand['verdict']}")
            selected.append(cand)
        else:
            names = ", ".join(str(n) for n in subjects.values()) or "none"
            out.add("model", False, f"{path} (sha256 {digest[:16]}...) matches no subject of the certificate; "
                    f"it is not the file that was certified (certified: {names})")
    return selected


def required_of(cand: dict[str, Any]) -> list[str]:
    """The gates a certificate's candidate had to pass: as recorded with it, else its policy's required gates, else
    every built-in gate (a certificate from before policies named them)."""
    recorded = cand.get("required_gates") or cand.get("policy", {}).get("thresholds", {}).get("required_gates")
    return [str(g) for g in recorded] if recorded else list(GATE_NAMES)


def _check_candidate(out: Outcome, cand: dict[str, Any], require: list[str] | None, policy: Any) -> None:
    name = cand["case"]
    if policy is not None:
        weaker = weaker_points(cand.get("policy", {}).get("thresholds", {}), policy)
        out.add("policy", not weaker, f"{name}: policy {cand.get('policy', {}).get('name')!r} "
                + (f"is weaker than {policy.name!r}: {'; '.join(weaker)}" if weaker
                   else f"is at least as strict as {policy.name!r}"))
    gates = require if require is not None else required_of(cand)
    missing = required_gates_missing(cand, gates)
    out.add("gates", not missing, f"{name}: " + (f"required gates not passed: {'; '.join(missing)}" if missing
                                                  else f"passed {', '.join(gates)}"))
    if cand.get("reason"):
        out.add("candidate", False, f"{name}: {cand['reason']}")
