"""Samples along each tensor's own batch axis: the one place that knows how a model's tensors hold their samples.

A plan's ``Layout`` (``certify.plan.types``) says, per input and output, which axis holds the samples (``None``: not
batched, e.g. a sample rate), which inputs are constants, which outputs the metric scores, and, for a streaming model,
which outputs are fed back as the next call's inputs. Every gate selects, splits and joins samples through these
functions, so a state tensor ``[2, batch, 128]`` is cut on axis 1 everywhere, never on axis 0 by accident.

Streaming models: a streamed dataset input carries one more axis than the model input, the chunks, right after its
batch axis (``input`` ``[sequences, chunks, 256]`` for a model input ``[batch, 256]``). A carried input that the
dataset does not give starts as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from certify.errors import ModelError
from certify.plan.types import Layout


def input_axis(layout: Layout, name: str) -> int | None:
    """The batch axis of input ``name`` (None for a constant or an unbatched input)."""
    tensor = layout.input(name)
    return None if tensor.value is not None else tensor.batch_axis


def output_axis(layout: Layout, name: str) -> int | None:
    return layout.output(name).batch_axis


def rows(array: np.ndarray, axis: int | None, index: slice | np.ndarray) -> np.ndarray:
    """The samples ``index`` of ``array`` along ``axis`` (the array itself when it is not batched)."""
    if axis is None or array.ndim == 0:
        return array
    if isinstance(index, slice):
        where: list[Any] = [slice(None)] * array.ndim
        where[axis] = index
        return np.asarray(array[tuple(where)])
    return np.asarray(np.take(array, index, axis=axis))


def count(layout: Layout, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Each batched array's number of samples (along its batch axis)."""
    counts = {}
    for name, array in arrays.items():
        axis = input_axis(layout, name)
        if axis is not None and array.ndim > 0:
            if axis >= array.ndim:
                raise ModelError(f"input {name or 'x'!r}: batch_axis {axis} but the array has {array.ndim} axes "
                                 f"(shape {tuple(array.shape)})", hint="fix inputs.<name>.batch_axis in the plan")
            counts[name] = int(array.shape[axis])
    return counts


def samples(layout: Layout, arrays: Mapping[str, np.ndarray]) -> int:
    """The number of samples the arrays hold (they must agree); 1 when nothing is batched."""
    counts = count(layout, arrays)
    if len(set(counts.values())) > 1:
        raise ModelError(f"inputs disagree on the number of samples (along their batch axes): {counts}",
                         hint="declare each input's batch axis: [models.inputs.NAME] batch_axis = 1 (or 'none')")
    return next(iter(counts.values()), 1)


def select(layout: Layout, arrays: Mapping[str, np.ndarray], index: slice | np.ndarray) -> dict[str, np.ndarray]:
    """Samples ``index`` of every batched input; constants and unbatched inputs as they are."""
    return {name: contiguous(rows(a, input_axis(layout, name), index)) for name, a in arrays.items()}


def streamed(layout: Layout, name: str) -> bool:
    """Is ``name`` a streamed input (a streaming model's batched input that is not carried): its dataset array
    has a chunk axis right after its batch axis."""
    return bool(layout.carry) and input_axis(layout, name) is not None and name not in layout.carried_inputs


def chunk(layout: Layout, arrays: Mapping[str, np.ndarray], c: int) -> dict[str, np.ndarray]:
    """Chunk ``c`` of every streamed input (its chunk axis removed); the other inputs as they are."""
    return {name: contiguous(np.take(a, c, axis=int(input_axis(layout, name) or 0) + 1))
            if streamed(layout, name) else a for name, a in arrays.items()}


def chunk_count(layout: Layout, arrays: Mapping[str, np.ndarray]) -> int:
    counts = {name: int(a.shape[int(input_axis(layout, name) or 0) + 1]) for name, a in arrays.items()
              if streamed(layout, name) and a.ndim > int(input_axis(layout, name) or 0) + 1}
    if not counts:
        raise ModelError("a streaming model ([models.stream]) needs a dataset input with a chunk axis right after "
                         "its batch axis", hint="e.g. input [sequences, chunks, samples] for a model input "
                         "[batch, samples]")
    if len(set(counts.values())) > 1:
        raise ModelError(f"streamed inputs disagree on the number of chunks: {counts}")
    return next(iter(counts.values()))


def first_step(layout: Layout, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A streaming model's served request: the first chunk of each streamed input (the state starts as zeros)."""
    return chunk(layout, arrays, 0) if layout.carry else dict(arrays)


def join(layout: Layout, names: Sequence[str], parts: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Batches' outputs joined along each output's batch axis (unbatched outputs: the first batch's)."""
    joined = []
    for i, name in enumerate(names):
        axis = output_axis(layout, name)
        pieces = [np.asarray(p[i]) for p in parts]
        joined.append(pieces[0] if axis is None or pieces[0].ndim == 0 else np.concatenate(pieces, axis=axis))
    return joined


def samples_first(layout: Layout, name: str, array: np.ndarray) -> np.ndarray:
    """Output ``name`` with its samples on axis 0 (what metrics score)."""
    axis = output_axis(layout, name)
    if axis is None:
        raise ModelError(f"output {name!r} is not batched (batch_axis = 'none'): a metric cannot score it",
                         hint="score a batched output: [models.outputs] score = [...]")
    return np.moveaxis(array, axis, 0) if axis else array


def scored(layout: Layout, names: Sequence[str]) -> list[int]:
    """Positions of the outputs the metric scores: ``[models.outputs] score``, else the first output."""
    if not layout.score:
        return [0]
    missing = [s for s in layout.score if s not in names]
    if missing:
        raise ModelError(f"[models.outputs] score names {missing}, which the model does not output "
                         f"(its outputs: {', '.join(names)})", hint="name outputs the model has")
    return [list(names).index(s) for s in layout.score]


def scored_array(layout: Layout, names: Sequence[str], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The scored output with samples first; several scored outputs are flattened per sample and concatenated."""
    picks = [samples_first(layout, names[i], np.asarray(outputs[i])) for i in scored(layout, names)]
    if len(picks) == 1:
        return picks[0]
    return np.concatenate([p.reshape(len(p), -1).astype(np.float32) for p in picks], axis=1)


def fixed_batch(layout: Layout, specs: Sequence[Any]) -> int | None:
    """The batch size the model's inputs fix on their batch axes (None when dynamic)."""
    sizes = set()
    for spec in specs:
        axis = input_axis(layout, spec.name)
        if axis is not None and axis < len(spec.shape) and isinstance(spec.shape[axis], int) and spec.shape[axis] > 0:
            sizes.add(int(spec.shape[axis]))
    if len(sizes) > 1:
        raise ModelError(f"the model's inputs fix different batch sizes {sorted(sizes)} on their batch axes",
                         hint="declare each input's batch axis: [models.inputs.NAME] batch_axis = ... (or 'none')")
    return sizes.pop() if sizes else None


def contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, keeping its rank (``np.ascontiguousarray`` turns a 0-d scalar into shape (1,))."""
    return array if array.flags.c_contiguous else np.array(array, order="C")
