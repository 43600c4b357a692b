"""The robustness gate's probes, and the side of them that runs inside the measurement worker.

A probe is a bad input for the runtime (``Probe``: its name, how an answer to it is judged, the words a clear error
names). ``probe`` runs in the worker for the candidate, reached through ``cmd_check(module="probes",
function="probe")``: it builds the bad request next to the loaded model from the valid one (``worker.feeds[key]``),
so an oversized batch never crosses the pipe, sends it straight to ``backend.infer`` (and ``tokenize``), past
``prepare_feeds``, and reports what came back: the exception (type, first line) or a summary of the answer judged
against what it should be. ``serve`` answers the valid request. The parent side, which classifies the reports,
restarts a worker a probe killed and gives the verdict, is ``certify.gates.robustness``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from certify.errors import CertifyError, first_line
from certify.measure import batching

# what a right answer is, when the runtime answers instead of raising
REJECT = "reject"  # no answer is right: any answer is wrong-but-silent
EQUIVALENT = "equivalent"  # the answer must equal the answer to the well-formed request it stands for
NON_FINITE = "non-finite"  # the valid answer's shapes, and the rows without the bad value unchanged
EMPTY = "empty"  # an empty answer (0 rows, or 0 positions) of the right shape
OVERSIZED = "oversized"  # every row answered, the repeated rows as in the small batch
FULL_LENGTH = "full length"  # every position of an over-long prompt evaluated: no silent truncation
TOKENIZE = "tokenize"  # text that is not valid UTF-8: tokenized, and the tokens served

SHAPE_WORDS = ("shape", "dim", "rank", "size", "incompatible", "expected", "[batch")
DTYPE_WORDS = ("type", "float", "int", "double", "string", "convert")
VALUE_WORDS = ("nan", "inf", "finite")
EMPTY_WORDS = ("empty", "zero", "size", "shape", "dim", "n >= 1")
SIZE_WORDS = ("memory", "alloc", "size", "batch", "large", "limit")
CONTEXT_WORDS = ("context", "n_ctx", "long", "length", "position")
VOCAB_WORDS = ("vocab", "token", "range", "index", "bound")
TEXT_WORDS = ("utf", "unicode", "encode", "decode", "surrogate", "codec", "byte")

RTOL, ATOL = 1e-4, 1e-5
INVALID_UTF8 = b"caf\xc3\xa9 \xff\xfe then a cut sequence \xe2\x82".decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Probe:
    name: str
    rule: str  # how an answer is judged (REJECT, EQUIVALENT, ...)
    words: tuple[str, ...]  # what a clear error's first line names


ARRAY_PROBES = (
    Probe("extra dimension", EQUIVALENT, SHAPE_WORDS), Probe("missing dimension", EQUIVALENT, SHAPE_WORDS),
    Probe("wrong feature size", REJECT, SHAPE_WORDS), Probe("wrong float dtype", EQUIVALENT, DTYPE_WORDS),
    Probe("wrong int dtype", EQUIVALENT, DTYPE_WORDS), Probe("string array", REJECT, DTYPE_WORDS),
    Probe("NaN input", NON_FINITE, VALUE_WORDS), Probe("+Inf input", NON_FINITE, VALUE_WORDS),
    Probe("empty batch", EMPTY, EMPTY_WORDS), Probe("oversized batch", OVERSIZED, SIZE_WORDS),
)
LANGUAGE_MODEL_PROBES = (
    Probe("1-D tokens", EQUIVALENT, SHAPE_WORDS), Probe("float token ids", EQUIVALENT, DTYPE_WORDS),
    Probe("string array", REJECT, DTYPE_WORDS), Probe("over-long prompt", FULL_LENGTH, CONTEXT_WORDS),
    Probe("empty prompt", EMPTY, EMPTY_WORDS), Probe("token id past the vocabulary", REJECT, VOCAB_WORDS),
    Probe("negative token id", REJECT, VOCAB_WORDS), Probe("invalid UTF-8 text", TOKENIZE, TEXT_WORDS),
)


def same(outputs: list[np.ndarray], reference: list[np.ndarray]) -> bool:
    """Equal answers: as many outputs, each with the reference's size and values (within float tolerance; a shape
    that differs only by unit dimensions counts as the same)."""
    if len(outputs) != len(reference):
        return False
    for out, ref in zip(outputs, reference, strict=True):
        out, ref = np.asarray(out), np.asarray(ref)
        if out.size != ref.size or out.dtype.kind not in "biuf" or ref.dtype.kind not in "biuf":
            return False
        scale = float(np.nanmax(np.abs(ref))) if ref.size and np.isfinite(ref).any() else 1.0
        if not np.allclose(out.reshape(ref.shape), ref, rtol=RTOL, atol=ATOL * max(1.0, scale), equal_nan=True):
            return False
    return True


# ------------------------------------------------------------------------------------------- in the worker


@dataclass
class Request:
    """What a probe sends, and what a right answer to it looks like (built in the worker)."""

    feeds: dict[str, np.ndarray] | None = None  # for backend.infer
    text: str | None = None  # for backend.tokenize, then the tokens for infer
    equivalent: dict[str, np.ndarray] | None = None  # the well-formed request whose answer it must equal
    shapes: list[tuple[int, ...]] | None = None  # the answer's expected shapes
    same_rows: slice | None = None  # samples of the answer (along each output's batch axis) equal to the valid one's
    skip: str = ""  # why the probe does not apply to this model


@dataclass(frozen=True)
class Axes:
    """Where the model's tensors hold their samples (the plan's layout, resolved against the loaded model)."""

    inputs: dict[str, int | None]  # each input's batch axis (None: a constant or unbatched input)
    outputs: list[int | None]  # each output's batch axis, in infer's order
    declared: dict[str, tuple[Any, ...]]  # each input's declared shape (ints fixed, names/None dynamic)
    data: tuple[str, ...]  # the inputs a probe corrupts: batched, neither constant nor carried state

    def first(self, valid: dict[str, np.ndarray]) -> str:
        return next((n for n in self.data if n in valid), next(iter(valid)))

    def take(self, feeds: dict[str, np.ndarray], index: slice | np.ndarray) -> dict[str, np.ndarray]:
        return {k: batching.rows(a, self.inputs.get(k, 0), index) for k, a in feeds.items()}

    def sized(self, shape: tuple[int, ...], position: int, samples: int) -> tuple[int, ...]:
        """An answer's shape with ``samples`` on output ``position``'s batch axis."""
        axis = self.outputs[position] if position < len(self.outputs) else 0
        return shape if axis is None or axis >= len(shape) else (*shape[:axis], samples, *shape[axis + 1:])

    def same(self, outputs: list[np.ndarray], index: slice) -> list[np.ndarray]:
        return [batching.rows(o, self.outputs[i] if i < len(self.outputs) else 0, index)
                for i, o in enumerate(outputs)]


def axes_of(worker: Any) -> Axes:
    layout, specs = worker.layout, worker.backend.input_specs()
    names = worker.output_names()
    inputs = {s.name: batching.input_axis(layout, s.name) for s in specs}
    outputs = [batching.output_axis(layout, n) for n in names] if names else []
    data = tuple(n for n, axis in inputs.items() if axis is not None and n not in layout.carried_inputs)
    return Axes(inputs, outputs, {s.name: tuple(s.shape) for s in specs}, data)


Maker = Callable[[dict[str, np.ndarray], list[np.ndarray], dict[str, Any], Axes], Request]


def _extra_dimension(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                     axes: Axes) -> Request:
    name = axes.first(valid)
    return Request({**valid, name: valid[name][None]}, equivalent=valid)


def _missing_dimension(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                       axes: Axes) -> Request:
    one, name = axes.take(valid, slice(0, 1)), axes.first(valid)
    return Request({**one, name: np.take(one[name], 0, axis=axes.inputs.get(name) or 0)}, equivalent=one)


def _wrong_feature_size(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                        axes: Axes) -> Request:
    """One more element on the input's last fixed dimension; a dimension the model declares dynamic (H and W of
    a fully convolutional network) takes any size, so it is never the one changed."""
    name = axes.first(valid)
    array, declared, batch = valid[name], axes.declared.get(name, ()), axes.inputs.get(name)
    fixed = [i for i, d in enumerate(declared) if i != batch and isinstance(d, int) and d > 0 and i < array.ndim]
    if not fixed:
        why = "no feature dimension" if array.ndim < 2 else f"only dynamic dimensions besides the batch {declared}"
        return Request(skip=f"input {name!r} has {why}: any size is a valid request")
    axis = fixed[-1]
    return Request({**valid, name: np.concatenate([array, np.take(array, [0], axis=axis)], axis=axis)})


def _wrong_float_dtype(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                       axes: Axes) -> Request:
    name = axes.first(valid)
    array = valid[name]
    wrong = array.astype(np.float32 if array.dtype == np.float64 else np.float64)
    return Request({**valid, name: wrong}, equivalent={**valid, name: wrong.astype(array.dtype)})


def _wrong_int_dtype(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                     axes: Axes) -> Request:
    name = axes.first(valid)
    array = valid[name]
    wrong = (np.round(array) if array.dtype.kind == "f" else array).astype(
        np.int64 if array.dtype == np.int32 else np.int32)
    return Request({**valid, name: wrong}, equivalent={**valid, name: wrong.astype(array.dtype)})


def _string_array(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                  axes: Axes) -> Request:
    name = axes.first(valid)
    return Request({**valid, name: np.full(valid[name].shape, "not a number")})


def _non_finite(value: float) -> Maker:
    def make(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any], axes: Axes) -> Request:
        name = next((k for k in axes.data if k in valid and valid[k].dtype.kind == "f"), None)
        if name is None:
            return Request(skip="the model has no float data input")
        array, axis = valid[name].copy(), axes.inputs.get(name) or 0
        first = np.moveaxis(array, axis, 0)[0]  # a view: one element of the first sample only
        first.flat[0] = value  # the other samples must not notice
        return Request({**valid, name: array}, shapes=[o.shape for o in answer], same_rows=slice(1, None))

    return make


def _empty_batch(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                 axes: Axes) -> Request:
    return Request(axes.take(valid, slice(0, 0)), shapes=[axes.sized(o.shape, i, 0) for i, o in enumerate(answer)])


def _oversized_batch(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                     axes: Axes) -> Request:
    rows, name = int(limits["rows"]), axes.first(valid)
    n = valid[name].shape[axes.inputs.get(name) or 0]
    feeds = axes.take(valid, np.arange(rows) % n)  # the valid samples, repeated
    return Request(feeds, shapes=[axes.sized(o.shape, i, rows) for i, o in enumerate(answer)],
                   same_rows=slice(0, n))


def _over_long(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
               axes: Axes) -> Request:
    n_ctx, name = limits.get("n_ctx"), axes.first(valid)
    if not n_ctx:
        return Request(skip="the backend reports no context length (info()['n_ctx'])")
    tokens = np.resize(valid[name][0], (1, int(n_ctx) + 1))
    return Request({name: tokens}, shapes=[(1, int(n_ctx) + 1, answer[0].shape[-1])])


def _empty_prompt(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                  axes: Axes) -> Request:
    name = axes.first(valid)
    return Request({name: valid[name][:1, :0]}, shapes=[(1, 0, answer[0].shape[-1])])


def _token_id(past_vocabulary: bool) -> Maker:
    def make(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any], axes: Axes) -> Request:
        name = axes.first(valid)
        tokens = valid[name][:1].copy()
        tokens[0, -1] = answer[0].shape[-1] if past_vocabulary else -1  # logits [.., vocab]: the vocabulary size
        return Request({name: tokens})

    return make


def _invalid_utf8(valid: dict[str, np.ndarray], answer: list[np.ndarray], limits: dict[str, Any],
                  axes: Axes) -> Request:
    return Request(text=INVALID_UTF8)


MAKERS: dict[str, Maker] = {
    "extra dimension": _extra_dimension, "missing dimension": _missing_dimension,
    "wrong feature size": _wrong_feature_size, "wrong float dtype": _wrong_float_dtype,
    "wrong int dtype": _wrong_int_dtype, "string array": _string_array, "NaN input": _non_finite(float("nan")),
    "+Inf input": _non_finite(float("inf")), "empty batch": _empty_batch, "oversized batch": _oversized_batch,
    "1-D tokens": _missing_dimension, "float token ids": _wrong_float_dtype, "over-long prompt": _over_long,
    "empty prompt": _empty_prompt, "token id past the vocabulary": _token_id(True),
    "negative token id": _token_id(False), "invalid UTF-8 text": _invalid_utf8,
}


def _infer(backend: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o) for o in backend.infer(feeds)]


def serve(worker: Any, key: str) -> list[np.ndarray]:
    """The answer to a prepared, valid request (``worker.feeds[key]``)."""
    return _infer(worker.backend, worker.feeds[key])


def probe(worker: Any, name: str, key: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Send probe ``name`` (built from the valid request ``worker.feeds[key]``) straight to the backend and report
    what came back: the exception (type, first line) or a summary of the answer judged against what it should be."""
    backend, valid, axes = worker.backend, worker.feeds[key], axes_of(worker)
    answer = _infer(backend, valid)
    request = MAKERS[name](valid, answer, limits, axes)
    if request.skip:
        return {"skip": request.skip}
    seen: dict[str, Any] = {"input": _describe(request)}
    started = time.perf_counter()
    try:
        outputs, tokens = _send(backend, request)
    except Exception as exc:  # every exception is the observation
        seen.update(raised=True, error_type=type(exc).__name__, ours=isinstance(exc, CertifyError),
                    message=first_line(str(exc)) or type(exc).__name__)
    else:
        if tokens is not None:
            seen["tokens"] = len(tokens)
            request.shapes = [(1, len(tokens), answer[0].shape[-1])] if tokens else []
        seen.update(raised=False, **_judged(backend, request, outputs, answer, axes))
    seen["duration_s"] = time.perf_counter() - started
    return seen


def _send(backend: Any, request: Request) -> tuple[list[np.ndarray], list[int] | None]:
    if request.text is None:
        assert request.feeds is not None
        return _infer(backend, request.feeds), None
    tokens = [int(t) for t in backend.tokenize(request.text)]
    return (_infer(backend, {"tokens": np.array([tokens], dtype=np.int32)}) if tokens else []), tokens


def _judged(backend: Any, request: Request, outputs: list[np.ndarray], answer: list[np.ndarray], axes: Axes
            ) -> dict[str, Any]:
    shapes = [tuple(int(d) for d in o.shape) for o in outputs]
    judged: dict[str, Any] = {
        "outputs": [{"shape": list(s), "dtype": str(o.dtype)} for s, o in zip(shapes, outputs, strict=True)],
        "finite": all(bool(np.isfinite(o).all()) for o in outputs if o.dtype.kind == "f"),
        "expected_shapes": [list(s) for s in request.shapes] if request.shapes is not None else None,
        "shapes_ok": None if request.shapes is None else shapes == [tuple(s) for s in request.shapes],
        "matches": None if request.equivalent is None else same(outputs, _infer(backend, request.equivalent)),
        "rows_poisoned": None, "rows_drift": None,
    }
    if request.same_rows is not None and judged["shapes_ok"]:
        judged.update(row_drift(axes.same(outputs, request.same_rows), axes.same(answer, request.same_rows)))
    return judged


def row_drift(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, Any]:
    """How far rows that should be untouched moved: ``poisoned`` when an output is non-finite where the reference
    is finite, else ``rows_drift``, the largest difference relative to the reference's largest magnitude (kernels
    that couple a batch, such as dynamic quantization's one activation scale per batch, move them a little)."""
    poisoned, drift = False, 0.0
    for out, ref in zip(outputs, reference, strict=True):
        if out.dtype.kind not in "biuf" or not out.size:
            continue
        out, ref = out.astype(np.float64), ref.astype(np.float64)
        poisoned |= bool((~np.isfinite(out) & np.isfinite(ref)).any())
        both = np.isfinite(out) & np.isfinite(ref)
        scale = max(float(np.abs(ref[both]).max()) if both.any() else 0.0, 1e-12)
        drift = max(drift, float(np.abs(out[both] - ref[both]).max()) / scale if both.any() else 0.0)
    return {"rows_poisoned": poisoned, "rows_drift": drift}


def _describe(request: Request) -> str:
    if request.text is not None:
        return f"text {request.text.encode('utf-8', 'surrogateescape')!r}"
    assert request.feeds is not None
    return ", ".join(f"{k} {a.dtype} {list(a.shape)}" for k, a in request.feeds.items())


def fail_next_infer(worker: Any) -> None:
    """In the worker: make the backend's next ``infer`` raise, as a runtime error mid-stream would; the one after it
    runs the backend's own ``infer`` again."""
    backend = worker.backend

    def failing(feeds: Any) -> Any:
        del backend.infer  # the instance attribute goes: the class's infer serves the next request
        raise RuntimeError("injected fault: the runtime raised in the middle of a request stream")

    backend.infer = failing
