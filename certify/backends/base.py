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
from certify.measure import batching
from certify.measure.batching import contiguous
from certify.plan.types import Layout, ModelRef


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
    - ``tokenize(text)`` gives the model's token ids for a text (no BOS added), ``detokenize(tokens)`` their text;
    - ``special_tokens()`` says whether the model's own metadata asks for BOS/EOS around a text (``add_bos``,
      ``bos``, ``add_eos``, ``eos``, and ``source``: where that was read), so evaluation text is scored in the
      regime the model was trained and ships in.
    """

    def prefill(self, tokens: np.ndarray) -> int: ...

    def decode_step(self, token: int) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def special_tokens(self) -> dict[str, Any]: ...

    def detokenize(self, tokens: list[int]) -> str: ...


def checked_tokens(tokens: np.ndarray, n_ctx: int, vocab: int, longer: str) -> np.ndarray:
    """A language model's token batch checked before its runtime sees it: ``[batch, n]`` integers with n >= 1,
    n within the context ``n_ctx`` (``longer``: this runtime's way to a longer context, said with the refusal) and
    every id inside the vocabulary. A ModelError otherwise: never a truncation, never an out-of-range lookup."""
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ModelError(f"tokens must be [batch, n] with n >= 1, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] > n_ctx:
        raise ModelError(f"the prompt has {tokens.shape[1]} tokens but the context holds n_ctx = {n_ctx}",
                         hint=f"use shorter prompts (dataset.context) or {longer.format(n=tokens.shape[1])}")
    if tokens.dtype.kind not in "iu":
        raise ModelError(f"token ids must be integers, got {tokens.dtype}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab:
        raise ModelError(f"token ids must lie in 0..{vocab - 1} (the vocabulary), got {low}..{high}",
                         hint="tokenize the text with this model's tokenizer")
    return tokens


def prepare_feeds(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray], layout: Layout | None = None, *,
                  whole: bool = False) -> dict[str, np.ndarray]:
    """Map dataset arrays onto model inputs and check them, once, before any timing.

    An array keyed ``""`` goes to the model's only input that the plan does not fill (a constant ``value`` or a
    carried state). Constants are added, carried inputs the dataset does not give start as zeros. An input's
    ``dtype`` in the plan casts to it; otherwise floats are cast to the model's float width (a documented safe
    conversion); any other mismatch is a ModelError naming input, shape and dtype. Shapes are checked on every axis
    but the input's batch axis (and a streamed input's chunk axis); ``whole=False`` (a served request, not the
    whole dataset) also checks the batch against a batch size the model fixes.
    """
    layout = layout or Layout()
    constants, carried = layout.constants(), set(layout.carried_inputs)
    if set(arrays) == {""}:
        free = [s for s in specs if s.name not in constants and s.name not in carried]
        if len(free) != 1:
            names = ", ".join(s.name for s in free)
            raise ModelError(f"the model has {len(free)} inputs to fill ({names}) but the dataset names one",
                             hint="map each model input to a dataset key: inputs = { name = 'key', ... }")
        arrays = {free[0].name: arrays[""]}
    arrays = {**arrays, **{name: np.asarray(t.value, dtype=t.dtype or _spec_dtype(specs, name))
                           for name, t in constants.items()}}
    unknown = [name for name in layout.constants() if name not in {s.name for s in specs}]
    if unknown:
        raise ModelError(f"the plan gives values for input(s) {unknown}, which the model does not have "
                         f"(its inputs: {', '.join(s.name for s in specs)})", hint="fix [models.inputs.NAME]")
    arrays = {**_initial_states(specs, arrays, layout), **arrays}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ModelError(f"dataset gives no array for model input(s) {missing}; it has {sorted(arrays)}",
                         hint="map model inputs to dataset keys in the plan's dataset.inputs table")
    feeds = {s.name: _check_array(s, np.asarray(arrays[s.name]), layout) for s in specs}
    batching.samples(layout, {k: v for k, v in feeds.items() if k not in constants})
    if not whole:
        _check_served_batch(specs, feeds, layout)
    return feeds


def _spec_dtype(specs: list[TensorSpec], name: str) -> str | None:
    return next((s.dtype for s in specs if s.name == name), None)


def _initial_states(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray], layout: Layout
                    ) -> dict[str, np.ndarray]:
    """Zeros for each carried input the dataset does not give: the spec's shape, the batch of the other inputs."""
    data = {k: v for k, v in arrays.items() if k not in layout.constants()}
    batch = batching.samples(layout, data) if data else 1
    zeros = {}
    for spec in specs:
        if spec.name not in layout.carried_inputs or spec.name in arrays:
            continue
        axis = batching.input_axis(layout, spec.name)
        shape = [batch if i == axis else d for i, d in enumerate(spec.shape)]
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ModelError(f"carried input {spec.name!r} has dynamic dimensions {spec.shape}: its initial "
                             "state cannot be zeros of a known shape",
                             hint=f"give the initial state in the dataset (dataset.inputs {spec.name} = 'key')")
        zeros[spec.name] = np.zeros([int(d) for d in shape if isinstance(d, int)], dtype=np.dtype(spec.dtype))
    return zeros


def _check_served_batch(specs: list[TensorSpec], feeds: Mapping[str, np.ndarray], layout: Layout) -> None:
    fixed = batching.fixed_batch(layout, specs)
    if fixed is None:
        return
    for spec in specs:
        axis = batching.input_axis(layout, spec.name)
        array = feeds[spec.name]
        if axis is not None and array.ndim == len(spec.shape) and array.shape[axis] != fixed:
            raise ModelError(f"input {spec.name!r} takes a fixed batch of {fixed} (shape {list(spec.shape)}) but this "
                             f"request has {array.shape[axis]} samples",
                             hint=f"set dataset.speed_batch_size = {fixed} (accuracy runs in batches of {fixed} by "
                                  "itself)")


def _check_array(spec: TensorSpec, array: np.ndarray, layout: Layout) -> np.ndarray:
    want = np.dtype(spec.dtype)
    asked = layout.input(spec.name).dtype
    if asked is not None:
        array = array.astype(asked)
    if array.dtype != want:
        if array.dtype.kind == want.kind == "f" or (array.dtype.kind in "iu" and want.kind in "iu"):
            array = array.astype(want)
        else:
            raise ModelError(f"input {spec.name!r}: dataset dtype {array.dtype} but the model expects {want}",
                             hint=f"set [models.inputs.{spec.name}] dtype = '{want}' to cast it, or convert the "
                                  "dataset")
    axis = batching.input_axis(layout, spec.name)
    shape = list(array.shape)
    if batching.streamed(layout, spec.name) and array.ndim == len(spec.shape) + 1:
        del shape[int(axis or 0) + 1]  # the chunk axis
    if len(shape) != len(spec.shape) or any(
        isinstance(d, int) and d > 0 and d != a and i != axis
        for i, (d, a) in enumerate(zip(spec.shape, shape, strict=True))
    ):
        raise ModelError(
            f"input {spec.name!r}: dataset shape {tuple(array.shape)} does not fit the model's {spec.shape}"
            + (f" (batch on axis {axis})" if axis else ""),
            hint=_shape_hint(spec, shape, axis),
        )
    return contiguous(array)


def _shape_hint(spec: TensorSpec, shape: list[int], axis: int | None) -> str:
    if len(shape) != len(spec.shape):
        return (f"the model's input has {len(spec.shape)} axes, the array {len(shape)}: check the dataset key, and "
                "for a scalar or unbatched input set [models.inputs.NAME] batch_axis = 'none' or a value")
    moved = [i for i, d in enumerate(spec.shape) if isinstance(d, int) and d > 0 and d != shape[i]]
    if axis == 0 and any(isinstance(spec.shape[i], int) and spec.shape[i] == shape[0] for i in moved):
        return f"the samples may be on another axis: set [models.inputs.{spec.name}] batch_axis"
    return "check the dataset's inputs key and its layout (e.g. NCHW vs NHWC, flattened vs not)"
