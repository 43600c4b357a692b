"""Robustness gate: bad inputs sent straight to the runtime, each judged as a clear error, a safe result or unsafe,
and after every one a valid request must still be answered as before.

The probes (``certify.measure.probes``) call ``backend.infer`` (and ``tokenize``) directly, past ``prepare_feeds``:
the runtime is under test, not the harness's own input checks. ``evaluate`` (the parent) sends them one at a time
to a worker for the candidate as its ``probe`` command (``certify.measure.worker.IN_WORKER``); ``probe`` (in the
worker) builds the bad request next to the loaded model, so an oversized batch never crosses the pipe, and reports what
came back:

- **clear error**: an exception whose first line is short and names the problem (a ``ModelError`` of our backend
  always does); an exception that does not is an **unclear error**, recorded but not failed;
- **safe result**: an answer with a documented meaning (NaN in -> NaN out, flagged; an empty batch -> an empty
  answer of the right shape; a float64 input converted: the same answer as the float32 one);
- **unsafe**: the worker crashed or hung, or a wrong-but-silent answer (a wrong feature size accepted, an id
  outside the vocabulary given logits, a prompt silently truncated, other rows of a batch changed by one NaN).

A probe that kills the worker never loses the others: the worker is restarted and the next probe runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from certify.errors import CertifyError, WorkerCrashed, first_line
from certify.measure import batching
from certify.measure.client import WorkerClient, open_worker
from certify.measure.probes import (
    ARRAY_PROBES,
    EMPTY,
    EQUIVALENT,
    FULL_LENGTH,
    LANGUAGE_MODEL_PROBES,
    NON_FINITE,
    OVERSIZED,
    REJECT,
    TOKENIZE,
    Probe,
    same,
)
from certify.plan import Layout, ModelRef
from certify.verdict import FAIL, NOT_APPLICABLE, PASS, GateResult, errored, label

if TYPE_CHECKING:
    from certify.gates.context import GateContext

CLEAR, UNCLEAR, SAFE, UNSAFE = "clear error", "unclear error", "safe result", "unsafe"
PROBE_ERROR = "probe error"

MAX_CLEAR_CHARS = 300  # a first line longer than this is a dump, not an explanation
VALID_ROWS, VALID_TOKENS = 8, 16  # the valid request: a few dataset rows (array models) or one short prompt
OVERSIZED_ROWS, OVERSIZED_BYTES = 4096, 256 << 20
OVERSIZED_BUDGET_S = 15.0  # and fewer when the valid request's latency says they would take longer (at least 2x)
PROBE_TIMEOUT_S = 30.0  # a probe answered later than this hung the runtime
MAX_ROW_DRIFT = 0.05  # rows a probe must not touch may move this much (of their largest magnitude), not more


# ------------------------------------------------------------------------------------------- judging


def is_clear(probe: Probe, seen: dict[str, Any]) -> bool:
    """A clear error: our backend's own error (it names the problem by construction), or a framework exception
    whose first line is short and names the problem (a word of the probe's kind: shape, dtype, vocabulary...)."""
    if seen.get("ours"):
        return True
    message = str(seen.get("message", "")).lower()
    return bool(message) and len(message) <= MAX_CLEAR_CHARS and any(word in message for word in probe.words)


def classify(probe: Probe, seen: dict[str, Any]) -> tuple[str, str]:
    """(outcome, what happened) for a probe the worker survived."""
    if "skip" in seen:
        return NOT_APPLICABLE, str(seen["skip"])
    if seen["raised"]:
        return (CLEAR if is_clear(probe, seen) else UNCLEAR), f"{seen['error_type']}: {seen['message']}"
    return judge_answer(probe, seen)


def judge_answer(probe: Probe, seen: dict[str, Any]) -> tuple[str, str]:
    """An answer instead of an error: safe when its meaning is the documented one, else wrong-but-silent."""
    got = ", ".join(str(tuple(o["shape"])) for o in seen["outputs"]) or "nothing"
    if probe.rule == REJECT:
        return UNSAFE, f"accepted silently: answered {got}"
    if probe.rule == EQUIVALENT:
        if seen.get("matches"):
            return SAFE, f"accepted: the same answer as the well-formed request ({got})"
        return UNSAFE, f"answered {got}, not the answer to the well-formed request"
    if seen.get("shapes_ok") is False:
        expected = ", ".join(str(tuple(s)) for s in seen.get("expected_shapes") or [])
        return UNSAFE, f"answered {got} where {expected} was due" + (
            ": the prompt was truncated silently" if probe.rule == FULL_LENGTH else "")
    if seen.get("rows_poisoned") or (seen.get("rows_drift") or 0.0) > MAX_ROW_DRIFT:
        how = "made non-finite" if seen.get("rows_poisoned") else f"moved by {seen['rows_drift']:.1%}"
        if probe.rule == NON_FINITE:
            return UNSAFE, f"one bad value in the first row changed the other rows' answers: {how}"
        return UNSAFE, f"the repeated rows' answers differ from the small batch's: {how}"
    return SAFE, _safe_note(probe, seen, got)


def _safe_note(probe: Probe, seen: dict[str, Any], got: str) -> str:
    if probe.rule == NON_FINITE:
        others = f"other rows unchanged (moved {seen.get('rows_drift') or 0.0:.2%})"
        return (f"non-finite outputs (flagged), {others}" if not seen["finite"]
                else f"finite outputs: the bad value was absorbed (e.g. by ReLU or a quantizer), {others}")
    if probe.rule == EMPTY:
        return f"an empty answer of the right shape {got}"
    if probe.rule == OVERSIZED:
        return f"answered {got}, the repeated rows as in the small batch"
    if probe.rule == FULL_LENGTH:
        return f"evaluated every position ({got}) past the context length"
    if probe.rule == TOKENIZE:
        return f"tokenized to {seen.get('tokens', 0)} tokens and served ({got})"
    return f"answered {got}"


# ------------------------------------------------------------------------------------------- the parent


@dataclass
class ProbeResult:
    name: str
    outcome: str
    note: str
    input: str = ""
    duration_s: float | None = None
    serving_after: str = "ok"  # ok, wrong answer, worker died; a restarted worker served the following probes
    message: str = ""  # the error's first line, when it raised or died
    observed: dict[str, Any] = field(default_factory=dict)


class Session:
    """The worker for the candidate, restarted when a probe kills it (or leaves it answering wrongly)."""

    def __init__(self, ref: ModelRef, valid: dict[str, np.ndarray], timeout_s: float) -> None:
        self.ref, self.valid, self.timeout_s = ref, valid, timeout_s
        self.client: WorkerClient | None = None
        self.loaded: dict[str, Any] = {}
        self.restarts, self.latency_s = 0, 0.0

    def start(self) -> list[np.ndarray]:
        """A fresh worker with the model loaded and the valid request prepared; its answer to that request."""
        self.close()
        self.client = open_worker("candidate", self.ref, self.timeout_s)
        self.loaded = self.client.call("load", ref=self.ref)
        self.client.call("feeds", key="valid", arrays=self.valid)
        answer = self.serve()  # the first call warms the runtime up; the second one's latency scales the probes
        started = time.perf_counter()
        self.serve()
        self.latency_s = time.perf_counter() - started
        return answer

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def serve(self) -> list[np.ndarray]:
        return list(self.call("serve_valid", self.timeout_s, key="valid"))

    def call(self, command: str, timeout_s: float, **kwargs: Any) -> Any:
        assert self.client is not None
        return self.client.call(command, timeout_s=timeout_s, **kwargs)

    def still_serving(self, before: list[np.ndarray]) -> str:
        """'ok' when a valid request is answered as before the probes; else what went wrong (and a restart)."""
        try:
            status = "ok" if same(self.serve(), before) else "wrong answer to a valid request"
        except WorkerCrashed as exc:
            status = f"worker died: {first_line(exc.message)}"
        except CertifyError as exc:
            status = f"valid request failed: {first_line(exc.message)}"
        if status != "ok":
            self.restart()
        return status

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def valid_request(ctx: GateContext) -> dict[str, np.ndarray]:
    """One serving batch (``dataset.speed_batch_size`` dataset rows, at most ``VALID_ROWS``) for array models, one
    short prompt for language models: the request every probe is made from and that must be answered the same
    before and after each probe. Whether one bad value spoils the other rows of a batch is checked only when the
    deployment batches (a batch of 1 has no neighbours to spoil)."""
    inputs, _ = ctx.data()
    if ctx.case.model.dataset.text is not None:
        return {k: np.asarray(a[:1, :VALID_TOKENS]) for k, a in inputs.items()}
    rows = max(1, min(VALID_ROWS, ctx.case.model.dataset.speed_batch_size))
    layout = ctx.case.model.layout
    return batching.first_step(layout, batching.select(layout, inputs, slice(0, rows)))


def limits_for(valid: dict[str, np.ndarray], loaded: dict[str, Any], layout: Layout | None = None,
               latency_s: float = 0.0) -> dict[str, Any]:
    """The oversized batch's rows (4096, fewer when they would pass 256 MiB or take longer than 15 s at the valid
    request's latency, never fewer than twice its rows) and the context length, if known."""
    layout = layout or Layout()
    row_bytes = max(1, sum(int(a.nbytes) for a in batching.select(layout, valid, slice(0, 1)).values()))
    n = batching.samples(layout, {k: v for k, v in valid.items() if k not in layout.constants()})
    rows = min(OVERSIZED_ROWS, OVERSIZED_BYTES // row_bytes)
    if latency_s > 0:
        rows = min(rows, int(n * OVERSIZED_BUDGET_S / latency_s))
    return {"rows": max(2 * n, rows), "valid_rows": n, "n_ctx": loaded.get("info", {}).get("n_ctx")}


def run_probe(session: Session, probe: Probe, before: list[np.ndarray], limits: dict[str, Any],
              timeout_s: float) -> ProbeResult:
    """One probe, judged; then the check that the runtime still answers a valid request as before."""
    started = time.perf_counter()
    try:
        seen = session.call("probe", timeout_s, name=probe.name, key="valid", limits=limits)
    except WorkerCrashed as exc:
        elapsed = time.perf_counter() - started
        note = (f"hung: no answer within {timeout_s:.0f} s" if elapsed >= timeout_s
                else f"crashed the runtime: {first_line(exc.message)}")
        session.restart()
        return ProbeResult(probe.name, UNSAFE, note, duration_s=elapsed, serving_after="worker died (restarted)",
                           message=first_line(exc.message))
    except CertifyError as exc:  # the probe itself could not be built or run: a harness problem, said as such
        serving = session.still_serving(before)
        return ProbeResult(probe.name, PROBE_ERROR, first_line(exc.message), serving_after=serving)
    outcome, note = classify(probe, seen)
    serving = "not checked" if outcome == NOT_APPLICABLE else session.still_serving(before)
    return ProbeResult(probe.name, outcome, note, str(seen.get("input", "")), seen.get("duration_s"), serving,
                       str(seen.get("message", "")),
                       {k: v for k, v in seen.items() if k not in ("input", "duration_s", "message")})


def evaluate(ctx: GateContext) -> GateResult:
    probes = LANGUAGE_MODEL_PROBES if ctx.case.model.dataset.text is not None else ARRAY_PROBES
    valid, timeout_s = valid_request(ctx), ctx.plan.measure.timeout_s
    session, results, limits = Session(ctx.case.candidate, valid, timeout_s), [], {}
    try:
        before = session.start()
        limits = limits_for(valid, session.loaded, ctx.case.model.layout, session.latency_s)
        for probe_ in probes:  # the oversized batch may take its rows' time; a hang is no answer in 20x that
            scale = limits["rows"] / limits["valid_rows"] if probe_.rule == OVERSIZED else 1.0
            wait = min(timeout_s, max(PROBE_TIMEOUT_S, 20 * session.latency_s * scale))
            results.append(run_probe(session, probe_, before, limits, wait))
    finally:
        session.close()
    ctx.measurement.update(
        executed_device=session.loaded.get("executed_device"), restarts=session.restarts, limits=limits,
        valid_request={k: [str(a.dtype), list(a.shape)] for k, a in valid.items()},
        probes=[asdict(r) for r in results])
    return verdict(results, ctx.hint)


def verdict(results: list[ProbeResult], hint: str = "") -> GateResult:
    """FAIL when a probe was unsafe or the runtime stopped answering valid requests correctly; ERROR when a probe
    could not run; else PASS. The reason lists every probe's outcome."""
    unsafe = [r.name for r in results if r.outcome == UNSAFE]
    stopped = [r.name for r in results if r.serving_after not in ("ok", "not checked") and r.outcome != UNSAFE]
    listed = "; ".join(f"{r.name}: {label(r.outcome).lower()}"
                       + (f" ({r.note})" if r.outcome in (SAFE, UNSAFE, UNCLEAR) else "") for r in results)
    details = {r.name: r.outcome for r in results}
    if unsafe or stopped:
        problems = ([f"unsafe: {', '.join(unsafe)}"] if unsafe else []) + (
            [f"stopped answering valid requests correctly after: {', '.join(stopped)}"] if stopped else [])
        return GateResult("robustness", FAIL, f"{'; '.join(problems)} -- {listed}",
                          hint=failure_hint(results, hint), details=details)
    broken = [r.name for r in results if r.outcome == PROBE_ERROR]
    if broken:
        return errored("robustness", f"probes that could not run: {', '.join(broken)} -- {listed}")
    return GateResult("robustness", PASS, f"{len(results)} probes, none unsafe, the runtime kept serving "
                      f"correctly -- {listed}", details=details)


FAILURE_HINTS = (  # (words of an unsafe probe's note, what to do about it)
    (("crashed", "hung"), "the runtime crashes or hangs on a bad input: validate inputs (shape, dtype, finite "
                          "values, sizes) before they reach it, and serve it from a supervised process that "
                          "restarts it"),
    (("other rows",), "reject non-finite inputs before requests are batched together: a kernel that couples the "
                      "batch (e.g. dynamic quantization's one activation range per batch) lets one bad request spoil "
                      "the others' answers"),
    (("accepted silently",), "check inputs against the model (shape, feature count, token ids below the vocabulary "
                             "size) in the serving path: the runtime answers them without a word"),
    (("not the answer",), "pin the input dtype and layout in the serving path: the runtime converts them unlike the "
                          "well-formed request"),
    (("truncated",), "reject prompts longer than the context (n_ctx) before inference"),
)


def failure_hint(results: list[ProbeResult], backend_hint: str = "") -> str:
    """What to do about the failures seen, most specific first, then the backend's own hint for this gate."""
    notes = " ".join(r.note for r in results if r.outcome == UNSAFE)
    found = [hint for signs, hint in FAILURE_HINTS if any(sign in notes for sign in signs)]
    if any(r.serving_after not in ("ok", "not checked") and r.outcome != UNSAFE for r in results):
        found.append("the runtime answered valid requests wrongly after a bad one: restart or re-create the session "
                     "after an error")
    return "; ".join(dict.fromkeys([*found, backend_hint] if backend_hint else found)) or (
        "validate inputs before the runtime and serve it from a supervised process")
