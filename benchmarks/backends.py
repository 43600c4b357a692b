"""Synthetic backends whose true speed is known, named in a ``ModelRef`` as ``framework = spin_framework()``.

``SpinBackend.infer`` busy-waits (a ``perf_counter_ns`` spin, no sleep: the core stays busy as under a real model)
for ``options.spin_ms`` milliseconds, optionally times a log-normal factor ``exp(jitter * N(0, 1))`` drawn from a
seeded generator. A baseline and a candidate that share ``jitter`` have latencies ``b * X`` and ``c * Y`` with ``X``
and ``Y`` identically distributed, so their true ratio of medians is exactly ``b / c`` whatever the jitter: the
speedup the harness should find is known in advance.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec
from certify.plan import ModelRef

FACTORS = 1 << 16  # pre-drawn jitter factors, cycled (no random draw inside the timed call)


class SpinBackend:
    """A model that takes a known time per inference. Options: ``spin_ms`` (float), ``jitter`` (log-normal
    sigma, 0 = none), ``seed`` (of the jitter). Input ``x`` float32 [1, 4]; output the input."""

    name: ClassVar[str] = "spin"
    distributions: ClassVar[tuple[str, ...]] = ("numpy",)
    install_hint: ClassVar[str] = "part of the repository's benchmarks"
    hints: ClassVar[Mapping[str, str]] = {}

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.spin_ns = int(float(ref.option("spin_ms", 1.0)) * 1e6)
        self.factors = np.ones(1)
        self.i = 0

    @classmethod
    def import_runtime(cls) -> None:
        return None

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        return True, "a CPU spin loop runs anywhere"

    def load(self) -> None:
        jitter, seed = float(self.ref.option("jitter", 0.0)), int(self.ref.option("seed", 0))
        if jitter > 0:
            self.factors = np.exp(jitter * np.random.default_rng(seed).standard_normal(FACTORS))

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("x", (1, 4), "float32")]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.i = (self.i + 1) % self.factors.size
        clock = time.perf_counter_ns
        end = clock() + int(self.spin_ns * self.factors[self.i])
        while clock() < end:
            pass
        return [feeds["x"]]

    def executed_device(self) -> str:
        return "cpu (spin loop)"

    def info(self) -> dict[str, Any]:
        return {"framework": "spin", "spin_ms": self.spin_ns / 1e6, "jitter": float(self.ref.option("jitter", 0.0))}

    def close(self) -> None:
        return None


def spin_framework() -> str:
    """The ``module:Class`` name of ``SpinBackend`` as this process imported it (workers inherit ``sys.path``)."""
    return f"{SpinBackend.__module__}:{SpinBackend.__name__}"


def spin_ref(name: str, spin_ms: float, jitter: float = 0.0, seed: int = 0) -> ModelRef:
    options = tuple(sorted({"spin_ms": spin_ms, "jitter": jitter, "seed": seed}.items()))
    return ModelRef(name=name, path=None, framework=spin_framework(), options=options)
