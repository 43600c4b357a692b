"""Backends that misbehave on purpose, named in test plans as ``framework = "tests.helpers.faulty:Class"``."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, ClassVar

import numpy as np

from certify.backends.onnxruntime import OnnxRuntimeBackend


class SegfaultOnLoad(OnnxRuntimeBackend):
    """Dies with SIGSEGV while loading, like a native runtime crash."""

    name: ClassVar[str] = "segfault"

    def load(self) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)


class HangOnInfer(OnnxRuntimeBackend):
    """Loads, then never returns from inference."""

    name: ClassVar[str] = "hang"

    def infer(self, feeds: Any) -> list[np.ndarray]:
        time.sleep(3600)
        return []


class SlowLoad(OnnxRuntimeBackend):
    """Takes two seconds to load: a run of these can be interrupted in the middle for sure."""

    name: ClassVar[str] = "slow-load"

    def load(self) -> None:
        time.sleep(2.0)
        super().load()


class AllocatesOnInfer(OnnxRuntimeBackend):
    """Asks for 2 GiB of working memory on every inference, like a runaway model."""

    name: ClassVar[str] = "allocates"

    def infer(self, feeds: Any) -> list[np.ndarray]:
        buffer = np.ones(2 * 1024**3 // 8, dtype=np.float64)  # written, so really resident
        return [buffer[:1]]
