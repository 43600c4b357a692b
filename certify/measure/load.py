"""The stress gate's load generator: runs inside the measurement worker, next to the loaded model, reached as
``worker.call("serve_load", ...)`` (``certify.measure.worker.IN_WORKER``).

Phases, one after the other on the one loaded model:

1. isolated: each distinct request's outputs, computed alone (the reference the outputs under load must equal),
   then a sequential run that gives the latency in isolation;
2. closed loop: ``clients`` threads send requests back to back for ``duration_s``, or longer when the isolated
   rate says its windows would hold fewer than ``MIN_WINDOW_REQUESTS`` each (``grown_duration``); a sampler thread
   reads the process's resident memory every ``SAMPLE_S``, with the host's busy CPU time and this process's own
   (to tell how much other processes took from the cores in each window);
3. open loop (``rate`` > 0): Poisson arrivals at ``rate`` per second, served in arrival order by a pool of ``clients``
   threads; a request's latency counts from its scheduled arrival, so queueing is included (MLPerf's Server
   scenario). Arrivals still waiting when the phase ends count as unserved, with the wait so far as their latency.
   When a pool thread was idle and slept until an arrival, the latency counts from when it woke: oversleeping is
   this load generator's own lateness (recorded apart). On a busy host that lateness (a woken thread waiting for a
   core) also delays the arrivals queued meanwhile; the gate therefore compares the open loop's p99 with the
   isolated p99 plus the p99 of that wake-up lateness.

A backend whose class does not declare ``thread_safe = True`` (one llama.cpp context, an MLX model) is served
through one lock: its clients take turns, and the evidence says so.

Recording keeps nothing per request: the leak check reads this very process's resident memory, so every record is
preallocated, and touched, before the load starts; a full record drops every other row and from then on keeps half
as many requests as before (a uniform sample of however long the run is).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from certify.errors import ModelError
from certify.measure import memory

Infer = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
CLOCK = time.perf_counter_ns
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
RTOL, ATOL = 1e-4, 1e-5  # outputs under load vs the same input's outputs in isolation (np.allclose)
ISOLATED_MIN_REQUESTS, ISOLATED_MIN_S, ISOLATED_MAX_S = 50, 1.0, 30.0
ISOLATED_SHARE = 0.5  # the isolated run lasts this share of duration_s (within the bounds above)
RECORDS_PER_THREAD = 1 << 15  # latency records kept per client thread before thinning
MEMORY_RECORDS = 1 << 12
SAMPLE_COLUMNS = ("t_ns", "rss_bytes", "host_busy_ms", "own_cpu_ns")  # what the sampler records
SAMPLE_S = 0.05  # resident-memory sampling period
BUCKETS_PER_WINDOW = 10  # completions are counted in time buckets; windows are made of whole buckets
FIRST_ERRORS = 5
MIN_WINDOW_REQUESTS = 10  # the closed loop grows until each window should hold this many completions ...
MAX_GROWN_S = 120.0  # ... but grows to no more than this (or the plan's duration_s, when longer)
GROWTH_MARGIN = 1.5  # the closed loop's rate may fall below the isolated one (clients contending for the cores)
HALVE_CHUNK = 256


class Thinned:
    """Rows of int64 columns in a preallocated, touched array; when full, every other row is dropped and only every
    ``stride``-th row offered is kept from then on."""

    def __init__(self, capacity: int, columns: int) -> None:
        self.rows = np.full((max(2, capacity), columns), -1, dtype=np.int64)
        self.size, self.stride, self.offered = 0, 1, 0

    def add(self, *values: int) -> None:
        self.offered += 1
        if (self.offered - 1) % self.stride:
            return
        if self.size == len(self.rows):
            self._halve()
            if (self.offered - 1) % self.stride:
                return
        self.rows[self.size] = values
        self.size += 1

    def _halve(self) -> None:
        """Keep every other row, compacted in place in small chunks: a temporary as large as the record would be
        served by mmap, and freeing it raises glibc's mmap threshold, after which such blocks stay on the heap and
        show as resident growth, the very thing this process is watching."""
        kept = (self.size + 1) // 2
        for start in range(0, kept, HALVE_CHUNK):
            stop = min(kept, start + HALVE_CHUNK)
            self.rows[start:stop] = self.rows[2 * start:2 * stop:2]
        self.size, self.stride = kept, self.stride * 2

    def table(self) -> np.ndarray:
        return self.rows[:self.size].copy()


@dataclass
class Phase:
    """A load phase's clock: requests start before ``end_ns``; completions are counted per time bucket."""

    duration_s: float
    windows: int
    start_ns: int = 0

    def __post_init__(self) -> None:
        self.start_ns = self.start_ns or CLOCK()
        self.buckets = self.windows * BUCKETS_PER_WINDOW
        self.bucket_ns = max(1, int(self.duration_s * 1e9) // self.buckets)

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.bucket_ns * self.buckets


@dataclass
class Tally:
    """One client thread's record of a phase: (start offset, latency, service time) rows, completions per bucket,
    errors, and output comparisons. Only its own thread writes it."""

    phase: Phase
    records: Thinned = field(init=False)
    completions: np.ndarray = field(init=False)
    attempts: int = 0
    errors: int = 0
    compared: int = 0
    mismatched: int = 0
    max_abs_diff: float = 0.0

    def __post_init__(self) -> None:
        self.records = Thinned(RECORDS_PER_THREAD, 3)
        self.completions = np.zeros(self.phase.buckets, dtype=np.int64)
        self.completions.fill(0)  # touched now, not on the first completion

    def done(self, start_ns: int, latency_ns: int, service_ns: int, end_ns: int) -> None:
        self.records.add(start_ns - self.phase.start_ns, latency_ns, service_ns)
        bucket = (end_ns - self.phase.start_ns) // self.phase.bucket_ns
        if bucket < self.phase.buckets:
            self.completions[bucket] += 1


def max_abs_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The largest absolute difference between two output lists (NaN where both are NaN counts as equal); inf when
    their number or shapes differ, or a NaN stands against a number."""
    if len(expected) != len(got):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, got, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            return float("inf")
        diff = np.abs(a64 - b64)
        diff[np.isnan(a64) & np.isnan(b64)] = 0.0
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
    return worst


def same_outputs(expected: list[np.ndarray], got: list[np.ndarray]) -> bool:
    return len(expected) == len(got) and all(
        np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)
        for a, b in zip(expected, got, strict=True))


def describe(exc: BaseException) -> str:
    """An error in one line: its type and the first line of its message."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Load:
    """Serves the distinct ``requests`` through ``infer`` in the three phases."""

    def __init__(self, infer: Infer, requests: list[Mapping[str, np.ndarray]], sample_every: int) -> None:
        self.infer, self.requests, self.sample_every = infer, requests, max(1, sample_every)
        self.references: list[list[np.ndarray]] = []
        self.first_errors: list[str] = []
        self._lock = threading.Lock()

    def reference(self) -> float:
        """Each request's outputs in isolation (a warm-up pass, then the kept pass); returns how far the two passes
        differ (a model that is not deterministic even alone)."""
        try:
            warm = [[np.array(o, copy=True) for o in self.infer(r)] for r in self.requests]
            self.references = [[np.array(o, copy=True) for o in self.infer(r)] for r in self.requests]
        except Exception as exc:
            raise ModelError(f"a request fails even alone, before any load: {describe(exc)}",
                             hint="the model must serve its dataset's inputs one at a time first") from None
        return max(max_abs_diff(a, b) for a, b in zip(warm, self.references, strict=True))

    def one(self, number: int, tally: Tally) -> int | None:
        """Serve request ``number`` (distinct inputs in turn); its end time, or None when it failed. Every
        ``sample_every``-th request's outputs are compared with the reference, after the clock was read."""
        index = number % len(self.requests)
        tally.attempts += 1
        try:
            outputs = self.infer(self.requests[index])
        except Exception as exc:  # a failed request is a finding, not the end of the run
            tally.errors += 1
            if len(self.first_errors) < FIRST_ERRORS:  # checked again under the lock: a cheap test first
                with self._lock:
                    if len(self.first_errors) < FIRST_ERRORS:
                        self.first_errors.append(describe(exc))
            return None
        end = CLOCK()
        if number % self.sample_every == 0:
            tally.compared += 1
            tally.max_abs_diff = max(tally.max_abs_diff, max_abs_diff(self.references[index], outputs))
            tally.mismatched += not same_outputs(self.references[index], outputs)
        return end

    def isolated(self, min_s: float, max_s: float) -> dict[str, Any]:
        """Sequential requests for ``min_s`` and at least ``ISOLATED_MIN_REQUESTS`` (but no longer than ``max_s``):
        the latency the load phases are compared with. It lasts seconds, not a burst of requests, so that the host's
        occasional stalls weigh on its p99 as on the load's. Other processes' CPU use is read at its start and end."""
        phase = Phase(max_s, 1)
        tally, number = Tally(phase), 0
        host = [(CLOCK() - phase.start_ns, memory.rss_bytes(), host_busy_ms(), time.process_time_ns())]
        while True:
            start = CLOCK()
            elapsed = (start - phase.start_ns) / 1e9
            if (number >= ISOLATED_MIN_REQUESTS and elapsed >= min_s) or elapsed >= max_s:
                break
            end = self.one(number, tally)
            if end is not None:
                tally.done(start, end - start, end - start, end)
            number += 1
        host.append((CLOCK() - phase.start_ns, memory.rss_bytes(), host_busy_ms(), time.process_time_ns()))
        return {**summary([tally], phase, hung=0), "memory": np.asarray(host, dtype=np.int64)}

    def closed_loop(self, clients: int, duration_s: float, windows: int, drain_s: float) -> dict[str, Any]:
        phase = Phase(duration_s, windows)
        tallies = [Tally(phase) for _ in range(clients)]
        samples = Thinned(MEMORY_RECORDS, len(SAMPLE_COLUMNS))

        def client(k: int) -> None:
            number, tally = k, tallies[k]
            while (start := CLOCK()) < phase.end_ns:
                end = self.one(number, tally)
                if end is not None:
                    tally.done(start, end - start, end - start, end)
                number += clients

        hung = run_threads([functools.partial(client, k) for k in range(clients)], phase, drain_s, samples)
        return {**summary(tallies, phase, hung=hung), "memory": samples.table()}

    def open_loop(self, clients: int, duration_s: float, rate: float, windows: int, seed: int,
                  drain_s: float) -> dict[str, Any]:
        phase = Phase(duration_s, windows)
        arrivals = Arrivals(rate, phase, seed)
        tallies = [Tally(phase) for _ in range(clients)]
        samples = Thinned(MEMORY_RECORDS, len(SAMPLE_COLUMNS))

        def client(tally: Tally, lateness: Thinned) -> None:
            while (arrival := arrivals.take()) is not None:
                number, due = arrival
                wait = due - CLOCK()
                if wait > 0:  # idle: wait for the arrival; oversleeping is this generator's, not the server's
                    time.sleep(wait / 1e9)
                start = CLOCK()
                end = self.one(number, tally)
                if wait > 0:
                    lateness.add(start - due)
                if end is not None:
                    tally.done(due, end - (start if wait > 0 else due), end - start, end)

        late = [Thinned(RECORDS_PER_THREAD, 1) for _ in tallies]
        hung = run_threads([functools.partial(client, t, x) for t, x in zip(tallies, late, strict=True)], phase,
                           drain_s, samples)

        unserved = arrivals.unserved(CLOCK())
        return {**summary(tallies, phase, hung=hung), "memory": samples.table(),
                "rate": rate, "unserved_wait_ns": unserved,
                "wake_lateness_ns": np.concatenate([x.table()[:, 0] for x in late])}


class Arrivals:
    """Poisson arrival times handed out in order, under a lock, to whichever pool thread is free: a backlog queues
    implicitly (its arrivals are only generated when taken) and costs no memory. No arrival is taken after the
    phase's end: those still due then are unserved."""

    def __init__(self, rate: float, phase: Phase, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.gap_ns, self.phase = 1e9 / rate, phase
        self.next_ns = phase.start_ns + self._gap()
        self.taken = 0
        self._lock = threading.Lock()

    def _gap(self) -> int:
        return int(self.rng.exponential(self.gap_ns))

    def take(self) -> tuple[int, int] | None:
        """(request number, scheduled time) of the next arrival, or None when the phase is over."""
        with self._lock:
            if self.next_ns >= self.phase.end_ns or CLOCK() >= self.phase.end_ns:
                return None
            arrival = (self.taken, self.next_ns)
            self.next_ns += self._gap()
            self.taken += 1
            return arrival

    def unserved(self, now_ns: int) -> np.ndarray:
        """How long each arrival scheduled in the phase but never taken had waited by ``now_ns`` (a lower bound of
        its latency)."""
        waits = []
        while self.next_ns < self.phase.end_ns:
            waits.append(now_ns - self.next_ns)
            self.next_ns += self._gap()
        return np.asarray(waits, dtype=np.int64)


def host_busy_ms() -> int:
    """CPU time the whole host has spent busy (all CPUs, from ``/proc/stat``), in ms; -1 where unknown. Minus this
    process's own CPU time, it tells how much other processes took from the cores during a window."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return -1
    if len(fields) < 8 or fields[0] != b"cpu":
        return -1
    user, nice, system, _idle, _iowait, irq, softirq, *rest = (int(f) for f in fields[1:])
    busy = user + nice + system + irq + softirq + (rest[0] if rest else 0)  # + steal
    return busy * 1000 // CLOCK_TICKS


def host_cpus() -> int:
    """The CPUs ``/proc/stat`` counts (the host's, which a container's cpu_count may not be); 0 where unknown."""
    try:
        with open("/proc/stat", "rb") as stat:
            return sum(1 for line in stat if line[:3] == b"cpu" and line[3:4].isdigit())
    except OSError:
        return 0


def run_threads(targets: list[Callable[[], None]], phase: Phase, drain_s: float, samples: Thinned) -> int:
    """Run the client threads with a resident-memory sampler next to them; wait for them until ``drain_s`` after
    the phase's end. Returns how many are still busy then (a request that hung: they are left behind, as daemons)."""
    stop = threading.Event()

    def sample() -> None:
        while True:
            samples.add(CLOCK() - phase.start_ns, memory.rss_bytes(), host_busy_ms(), time.process_time_ns())
            if stop.wait(SAMPLE_S):
                return

    sampler = threading.Thread(target=sample, name="stress-memory", daemon=True)
    threads = [threading.Thread(target=t, name=f"stress-client-{i}", daemon=True) for i, t in enumerate(targets)]
    sampler.start()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max(0.0, (phase.end_ns - CLOCK()) / 1e9) + drain_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    sampler.join()
    return sum(thread.is_alive() for thread in threads)


def summary(tallies: list[Tally], phase: Phase, *, hung: int) -> dict[str, Any]:
    """A phase's record, merged over its client threads: (start offset, latency, service) rows in ns, completions
    per bucket, and the counts."""
    rows = np.concatenate([t.records.table() for t in tallies]) if tallies else np.empty((0, 3), np.int64)
    return {
        "records": rows[np.argsort(rows[:, 0], kind="stable")],
        "thinned_stride": max(t.records.stride for t in tallies),
        "completions": np.sum([t.completions for t in tallies], axis=0), "bucket_s": phase.bucket_ns / 1e9,
        "duration_s": phase.bucket_ns * phase.buckets / 1e9, "requests": sum(t.attempts for t in tallies),
        "hung": hung,
        "errors": sum(t.errors for t in tallies), "compared": sum(t.compared for t in tallies),
        "mismatched": sum(t.mismatched for t in tallies),
        "max_abs_diff": max((t.max_abs_diff for t in tallies), default=0.0),
    }


def grown_bound(duration_s: float) -> float:
    """The longest a closed loop planned for ``duration_s`` may grow to."""
    return max(duration_s, MAX_GROWN_S)


def grown_duration(duration_s: float, windows: int, isolated_rate: float) -> float:
    """``duration_s``, or longer so that each of the ``windows`` should hold ``MIN_WINDOW_REQUESTS`` completions at
    the rate measured in isolation (with ``GROWTH_MARGIN``), up to ``grown_bound``: a slow model (a language model
    scoring a window in half a second) otherwise gives two or three requests a window, where a memory slope is the
    phase of a per-request sawtooth and a throughput ratio is a count of two."""
    if not isolated_rate > 0:
        return duration_s  # nothing completed alone: the errors check has its answer already
    needed = windows * MIN_WINDOW_REQUESTS * GROWTH_MARGIN / isolated_rate
    return min(max(duration_s, needed), grown_bound(duration_s))


def isolated_bounds(duration_s: float) -> tuple[float, float]:
    """(min, max) seconds of the isolated run for a load phase of ``duration_s``."""
    least = min(max(ISOLATED_MIN_S, ISOLATED_SHARE * duration_s), ISOLATED_MAX_S)
    return least, max(least, min(duration_s, ISOLATED_MAX_S))


class TurnLock:
    """A first-come, first-served lock: callers get it in the order they asked (``threading.Lock`` lets the thread
    that just released it take it again at once, starving the others: not how a serving queue behaves)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next_ticket = self._serving = 0

    def __enter__(self) -> None:
        with self._changed:
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            self._changed.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._serving += 1
            self._changed.notify_all()


def serialized(infer: Infer) -> Infer:
    """``infer`` behind one first-come, first-served lock: for a backend whose calls must not overlap (one context
    serving its clients in turn)."""
    turn = TurnLock()

    def call(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with turn:
            return infer(feeds)

    return call


def prompt_request(backend: Any) -> Infer:
    """A language model's serving request: each prompt (a row of ``tokens``) evaluated from an empty context up to
    its first generated token (``prefill``: last position's logits only), answered with those tokens."""
    def call(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray([backend.prefill(row) for row in np.asarray(feeds["tokens"])], dtype=np.int64)]

    return call


def serve(worker: Any, keys: list[str], clients: int, duration_s: float, rate: float, windows: int,
          sample_every: int, seed: int, drain_s: float, request: str = "infer") -> dict[str, Any]:
    """The whole load run on ``worker``'s loaded backend, over the prepared feeds ``keys`` (one distinct request
    each). ``request = "prompt"``: a language model serves prompts (``prompt_request``), not evaluations of
    every position's logits. Returns every phase's record (see ``summary``) for the parent to judge."""
    backend = worker.backend
    thread_safe = bool(getattr(type(backend), "thread_safe", False))
    infer = prompt_request(backend) if request == "prompt" else backend.infer
    load = Load(infer if thread_safe else serialized(infer), [worker.feeds[k] for k in keys], sample_every)
    result: dict[str, Any] = {"serialized": not thread_safe, "clients": clients, "distinct_requests": len(keys),
                              "request": ("one prompt up to its first generated token" if request == "prompt"
                                          else "one inference of the request's inputs"),
                              "reference_repeat_max_abs_diff": load.reference()}
    result["isolated"] = isolated = load.isolated(*isolated_bounds(duration_s))
    alone_s = (isolated["memory"][-1, 0] - isolated["memory"][0, 0]) / 1e9
    rate_alone = (isolated["requests"] - isolated["errors"]) / alone_s if alone_s > 0 else 0.0
    result["closed"] = load.closed_loop(clients, grown_duration(duration_s, windows, rate_alone), windows, drain_s)
    result["closed"]["planned_duration_s"] = duration_s
    if rate > 0 and not result["closed"]["hung"]:
        result["open"] = load.open_loop(clients, duration_s, rate, windows, seed, drain_s)
    result.update(first_errors=load.first_errors, executed_device=backend.executed_device(), host_cpus=host_cpus())
    return result
