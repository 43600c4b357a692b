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


GATE_ENV = "CERTIFY_TEST_GATE"  # a path: GatedLoad waits for it to exist


class GatedLoad(OnnxRuntimeBackend):
    """Loads only once the file named by ``$CERTIFY_TEST_GATE`` exists, and first says it is waiting (that path
    + ".waiting"): a test stops a session while a case is surely in the middle of loading, whatever the host's
    speed, and lets the cases through when it resumes."""

    name: ClassVar[str] = "gated-load"

    def load(self) -> None:
        gate = os.environ.get(GATE_ENV)
        if gate:
            with open(gate + ".waiting", "a", encoding="utf-8") as waiting:
                waiting.write(f"{os.getpid()}\n")
            while not os.path.exists(gate):
                time.sleep(0.05)
        super().load()


class AllocatesOnInfer(OnnxRuntimeBackend):
    """Asks for 2 GiB of working memory on every inference, like a runaway model."""

    name: ClassVar[str] = "allocates"

    def infer(self, feeds: Any) -> list[np.ndarray]:
        buffer = np.ones(2 * 1024**3 // 8, dtype=np.float64)  # written, so really resident
        return [buffer[:1]]
