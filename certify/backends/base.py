"""The backend boundary: a small Protocol every framework implements, plus input checking shared by all.

A backend instance lives inside a measurement worker process. Its module must not import the framework at
import time: ``import_runtime()`` does that, so a missing framework is a ``BackendUnavailable`` with an
install hint, not a crash of the pytest session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from certify.errors import ModelError
from certify.plan.types import ModelRef


@dataclass(frozen=True)
class TensorSpec:
    """A model input: its name, shape (ints for fixed dims, str/None for dynamic ones) and numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@runtime_checkable
class Backend(Protocol):
    """What the harness needs from a framework. Example implementation: ``certify.backends.onnxruntime``."""

    name: ClassVar[str]
    distributions: ClassVar[tuple[str, ...]]  # recorded by version, e.g. ("onnxruntime",)
    install_hint: ClassVar[str]
    hints: ClassVar[Mapping[str, str]]  # gate -> what to try when that gate fails on this framework

    def __init__(self, ref: ModelRef) -> None: ...

    @classmethod
    def import_runtime(cls) -> None:
        """Import the framework; raise BackendUnavailable (with an install hint) when it cannot."""

    # Optional: ``prepare(cls, ref)``, a classmethod the worker calls before it notes its memory footprint, for
    # imports only some models need (MLX imports mlx-lm only for mlx-lm folders).

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        """Can ``ref``'s device run here? (ok, what was detected) -- decides skips before any worker starts."""

    def load(self) -> None:
        """Load ``ref`` onto its device; raise ModelError with the cause on failure."""

    def input_specs(self) -> list[TensorSpec]: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference on prepared feeds (the timed hot path: keep it bare)."""

    def executed_device(self) -> str:
        """The device that really executed, as the framework reports it (e.g. 'CPUExecutionProvider')."""

    def info(self) -> dict[str, Any]:
        """Framework details worth recording: versions, options in force, providers, threads."""

    def close(self) -> None: ...


@runtime_checkable
class LanguageModel(Backend, Protocol):
    """A backend for causal language models (llama.cpp, MLX). Its one input is ``tokens`` (int32, [batch, n]):

    - ``infer({"tokens": t})`` evaluates each row from an empty context and returns ``[logits]`` with logits
      float32 ``[batch, n, vocab]``: the model's next-token scores after every position (prompt processing);
    - ``prefill(tokens)`` evaluates a 1-D prompt from an empty context, computes only its last position's
      next-token logits and returns that token (greedy): what prompt processing tokens/s and time to first
      token measure. The ``decode_step`` context then continues after the prompt;
    - ``decode_step(token)`` appends one token to a running context and computes its next-token logits (one
      generation step, what tokens/s of generation measures); the context restarts when it is full;
    - ``tokenize(text)`` gives the model's token ids for a text (no BOS added).
    """

    def prefill(self, tokens: np.ndarray) -> int: ...

    def decode_step(self, token: int) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...


def prepare_feeds(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map dataset arrays onto model inputs and check them, once, before any timing.

    An array keyed ``""`` goes to the model's only input. Floats are cast to the model's float width
    (a documented safe conversion); any other mismatch is a ModelError naming input, shape and dtype.
    """
    if set(arrays) == {""}:
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise ModelError(f"the model has {len(specs)} inputs ({names}) but the dataset names one",
                             hint="map each model input to a dataset key: inputs = { name = 'key', ... }")
        arrays = {specs[0].name: arrays[""]}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ModelError(f"dataset gives no array for model input(s) {missing}; it has {sorted(arrays)}",
                         hint="map model inputs to dataset keys in the plan's dataset.inputs table")
    return {s.name: _check_array(s, np.asarray(arrays[s.name])) for s in specs}


def _check_array(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if array.dtype != want:
        if array.dtype.kind == want.kind == "f" or (array.dtype.kind in "iu" and want.kind in "iu"):
            array = array.astype(want)
        else:
            raise ModelError(f"input {spec.name!r}: dataset dtype {array.dtype} but the model expects {want}",
                             hint="convert the dataset to the model's input dtype")
    if len(array.shape) != len(spec.shape) or any(
        isinstance(d, int) and d > 0 and d != a for d, a in zip(spec.shape, array.shape, strict=False)
    ):
        raise ModelError(
            f"input {spec.name!r}: dataset shape {tuple(array.shape)} does not fit the model's {spec.shape}",
            hint="check the dataset's inputs key and its layout (e.g. NCHW vs NHWC, flattened vs not)",
        )
    return np.ascontiguousarray(array)
