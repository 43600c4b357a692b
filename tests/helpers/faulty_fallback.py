"""Backends that misbehave on purpose for the fallback and robustness gates, named in test plans as
``framework = "tests.helpers.faulty_fallback:Class"``. Each is the real ONNX Runtime backend with one fault."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from certify.backends.onnxruntime import OnnxRuntimeBackend


class CrashesOnNaN(OnnxRuntimeBackend):
    """Dies with SIGSEGV when an input holds a NaN, as a native kernel reading past a NaN-poisoned index would."""

    name: ClassVar[str] = "crashes-on-nan"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if any(np.asarray(a).dtype.kind == "f" and bool(np.isnan(a).any()) for a in feeds.values()):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().infer(feeds)


class SilentlyTruncates(OnnxRuntimeBackend):
    """Accepts inputs with more features than the model has by dropping the extra ones: a wrong-but-silent answer
    (a preprocessing shim that hides a feature-order or version mismatch)."""

    name: ClassVar[str] = "silently-truncates"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        fitted = dict(feeds)
        for spec in self.input_specs():
            array, width = np.asarray(feeds[spec.name]), spec.shape[-1]
            if isinstance(width, int) and array.ndim == len(spec.shape) and array.shape[-1] > width:
                fitted[spec.name] = np.ascontiguousarray(array[..., :width])
        return super().infer(fitted)


class SlowToRecover(OnnxRuntimeBackend):
    """Takes ``LOAD_DELAY_S`` to load (a cold start: a large model read from slow storage, a JIT warm-up)."""

    name: ClassVar[str] = "slow-to-recover"
    LOAD_DELAY_S: ClassVar[float] = 2.0

    def load(self) -> None:
        time.sleep(self.LOAD_DELAY_S)
        super().load()


class HangsOnEmptyBatch(OnnxRuntimeBackend):
    """Never returns when a request has no rows, like a kernel waiting on work that never comes."""

    name: ClassVar[str] = "hangs-on-empty-batch"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if any(np.asarray(a).ndim and not len(a) for a in feeds.values()):
            time.sleep(3600)
        return super().infer(feeds)
