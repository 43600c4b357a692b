"""The evidence record and its measurement parts, typed: what ``certify.measure`` writes, the gates read and the
reports show. One definition of each key, shared by all three (the record is stored as JSON in
``evidence.jsonl``; these types say what a record holds, they add nothing to it)."""

from __future__ import annotations

from typing import Any, TypedDict

# The keys of a latency summary (``certify.measure.stats.summarize``), milliseconds unless said otherwise:
# p50_ms p90_ms p95_ms p99_ms mean_ms stdev_ms min_ms max_ms cv robust_cv n.
LatencySummary = dict[str, float]


class Loaded(TypedDict):
    """Where a model ran, as its worker reported after loading it."""

    executed_device: str
    info: dict[str, Any]
    load_s: float


class SideTiming(Loaded):
    """One side (baseline or candidate) of a paired speed run."""

    latency: LatencySummary
    drift: float


# The host's noise check before a paired speed run (``certify.measure.preflight.run_preflight``): ``noise`` (quiet,
# noisy, too_noisy), ``option`` (the plan's measure.noise), ``findings``, ``summary``, ``warning``, ``widened`` (the
# bounds a noisy host widened) and the raw samples behind them (calibration, busiest processes, load, frequency).
Preflight = dict[str, Any]


class PairedSpeed(TypedDict, total=False):
    """A paired, interleaved speed run (``certify.measure.speed.measure_speed``): the speed and stability gates'
    evidence."""

    speedup: float
    interval: list[float]
    confidence: float
    stop_reason: str
    duration_s: float
    rounds: int
    block_iterations: int
    order: str
    mode: str  # infer | decode (one sample = one generated token) | prompt (one sample = one prompt)
    bootstrap: str
    block_rewarm_iterations: int
    interval_method: str
    bootstrap_interval: list[float]
    window_interval: list[float] | None
    window_speedups: list[float]
    replicates: int  # fresh worker pairs measured one after the other
    replicate_speedups: list[float]
    replicate_interval: list[float] | None
    replicate_stops: list[str]
    samples: int
    warmup_iterations: int
    warmups: list[int]  # untimed warm-up iterations done, per worker and replicate (long iterations warm less)
    baseline: SideTiming
    candidate: SideTiming
    baseline_ns: list[int]
    candidate_ns: list[int]
    preflight: Preflight
    preflight_after: Preflight  # the same check right after the run (the host may have changed during it)
    conditions: dict[str, Any]  # the worse of the two (``certify.measure.preflight.conditions``): in the certificate
    energy: dict[str, Any]
    bounds: dict[str, float]
    language_model: dict[str, Any]  # prompt processing and generation figures of both sides


class MemoryFigures(TypedDict):
    """One model's working set (``certify.measure.footprint.measure_memory``): bytes of its worker's peak above
    the footprint before the load, median over repeats."""

    model_bytes: int
    samples: list[int]
    min: int
    max: int
    mapped_model_bytes: int | None
    model_bytes_without_mapped: int | None
    counts_mapped_weights: bool
    rss_before: int
    peak: int
    peak_reset: bool
    file_bytes: int
    executed_device: str
    method: str
    workload: str  # what ran between the load and the reading
    reported_buffers: dict[str, int]  # the runtime's own split (llama.cpp: weights, kv_cache, compute, output)


class AccuracyFigures(TypedDict, total=False):
    """The accuracy gate's evidence (``certify.measure.accuracy.evaluate``): the metric on both sides, the
    retention and its paired bootstrap interval."""

    metric: str
    higher_is_better: bool
    baseline: float
    candidate: float
    retention: float
    interval: list[float]
    confidence: float
    samples: int
    top1_agreement: float  # class-score outputs and language models only
    fidelity: dict[str, Any]  # language models: KL divergence, agreement, perplexity
    candidate_where: str
    identical_outputs: bool  # the candidate's scored outputs equal the baseline's bit for bit
    same_file_as_baseline: bool  # the candidate's model file has the baseline's digest


BOARD_MARK = "@"  # a case measured on a board of the lab: '<model>/<candidate>@<board>'


def case_id(model: str, candidate: str, board: str | None = None) -> str:
    """The id of a case: 'model/candidate', and '@board' after it when it is measured on a board of the lab."""
    pair = f"{model}/{candidate}"
    return pair if board is None else f"{pair}{BOARD_MARK}{board}"


def split_case_id(case: str) -> tuple[str, str | None]:
    """A case id as ('model/candidate', board): 'm/int8@nuc1' -> ('m/int8', 'nuc1'), 'm/int8' -> ('m/int8', None).
    Only an '@' after the candidate's '/' names a board (a model named 'a@b' is not on a board)."""
    pair, mark, board = case.rpartition(BOARD_MARK)
    if not mark or not board or "/" in board or "/" not in pair:
        return case, None
    return pair, board


class CaseFields(TypedDict):
    """What names a case (``certify.cases.Case.describe``): in every evidence record and results.json entry. ``case``
    is ``case_id(model, candidate, board)``; ``board`` is the name of the lab's board that measured it, None for a
    case measured here."""

    case: str
    model: str
    candidate: str
    gate: str
    framework: str
    device: str
    platforms: list[str]
    markers: list[str]
    board: str | None  # the lab's board that measured it (None: the machine running pytest)
    recipe: dict[str, Any] | None


class EvidenceRecord(CaseFields, total=False):
    """One line of ``evidence.jsonl``: a case, its verdict and what was measured to reach it."""

    run_id: str
    nodeid: str
    result: dict[str, Any]  # certify.verdict.GateResult.to_dict()
    plan_digest: str
    measurement: dict[str, Any]  # the gate's evidence: a PairedSpeed, {baseline, candidate: MemoryFigures}, ...
    host_fingerprint: str  # the machine that measured: this host's, or the board's
    board_facts: dict[str, Any] | None  # the board that measured (``certify.lab.fleet.LabBoard.facts``), None here
    policy: dict[str, Any]
    started: float
    finished: float
    serialized: bool
    lock_wait_s: float
    digests: dict[str, str | None]
    made_by: dict[str, Any] | None
    candidate_path: str | None  # the file measured (a recipe's built artifact)
