"""Backends that break only under sustained concurrent load, named in test plans as
``framework = "tests.helpers.faulty_stress:Class"``. Each serves correct outputs in isolation, so only the stress
gate can catch it, and each breaks one of its checks."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from certify.backends.onnxruntime import OnnxRuntimeBackend


class LeakOnInfer(OnnxRuntimeBackend):
    """Keeps ``LEAK_BYTES`` per request alive (a per-request history nobody trims): resident memory grows with
    every request. Bounded by ``LEAK_LIMIT`` so a long run cannot exhaust the machine."""

    name: ClassVar[str] = "leak-on-infer"
    LEAK_BYTES: ClassVar[int] = 64 * 1024
    LEAK_LIMIT: ClassVar[int] = 512 * 1024 * 1024

    def __init__(self, ref: Any) -> None:
        super().__init__(ref)
        self.history: list[np.ndarray] = []

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = super().infer(feeds)
        if len(self.history) * self.LEAK_BYTES < self.LEAK_LIMIT:
            self.history.append(np.ones(self.LEAK_BYTES // 8))  # written, so its pages are resident
        return outputs


class SlowsUnderLoad(OnnxRuntimeBackend):
    """Every call that starts while another is running makes all later calls slower (a contended structure that
    grows, e.g. a lock-protected list scanned per call): alone it is as fast as the model; under concurrent load its
    throughput falls window after window and its tail latency climbs."""

    name: ClassVar[str] = "slows-under-load"
    PENALTY_S: ClassVar[float] = 150e-6  # added per contended call so far
    MAX_PENALTY_S: ClassVar[float] = 0.05

    def __init__(self, ref: Any) -> None:
        super().__init__(ref)
        self._lock = threading.Lock()
        self._running = 0
        self._contended = 0

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self._contended += self._running > 0
            self._running += 1
            penalty = min(self.MAX_PENALTY_S, self._contended * self.PENALTY_S)
        try:
            if penalty:
                time.sleep(penalty)
            return super().infer(feeds)
        finally:
            with self._lock:
                self._running -= 1


class RacyOutputs(OnnxRuntimeBackend):
    """Post-processes through one output slot shared by every caller, without a lock: when two calls overlap, one
    may return the other's outputs. Sequential calls are always right."""

    name: ClassVar[str] = "racy-outputs"
    RACE_WINDOW_S: ClassVar[float] = 0.002

    def __init__(self, ref: Any) -> None:
        super().__init__(ref)
        self._slot: list[np.ndarray] = []

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._slot = super().infer(feeds)
        time.sleep(self.RACE_WINDOW_S)  # "post-processing", during which another caller may replace the slot
        return [np.array(o, copy=True) for o in self._slot]


class FailsSometimes(OnnxRuntimeBackend):
    """Raises on every ``EVERY``-th request (counted over the worker's whole life)."""

    name: ClassVar[str] = "fails-sometimes"
    EVERY: ClassVar[int] = 50

    def __init__(self, ref: Any) -> None:
        super().__init__(ref)
        self._calls = itertools.count(1)  # next() on a count is atomic under the GIL

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        call = next(self._calls)
        if call % self.EVERY == 0:
            raise RuntimeError(f"simulated failure of request {call} (every {self.EVERY}th fails)")
        return super().infer(feeds)
