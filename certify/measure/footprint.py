"""Memory of a model: peak resident memory of a fresh worker after load + inference, minus its footprint
just before the load (the framework is already imported then, so the interpreter and runtime libraries
are not counted). Repeated in fresh workers; the median is the value, min..max the interval.

The gated value counts weights mapped from the model file (mmap) like any other resident page: inference touches
every weight on each pass, so on the device they must be in RAM either way; leaving them out would certify a
mapped model as almost free. The figure without them (``model_bytes_without_mapped``: the value minus the
model's file pages resident at the end) is recorded next to it, for a deployment that shares one mapped copy
between processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from certify.digests import model_files
from certify.measure.client import open_worker
from certify.plan import Measure, ModelRef
from certify.records import MemoryFigures

INFERENCES = 20
GENERATED_TOKENS = 64  # a language model's workload: one prompt, then this many tokens generated


def model_files_bytes(ref: ModelRef) -> int:
    """Size on disk of every file the model is made of (an IR's .bin, ONNX external data, a folder's files)."""
    return sum(f.stat().st_size for f in model_files(ref.file))


def measure_memory(role: str, ref: ModelRef, feeds: dict[str, np.ndarray], measure: Measure, *,
                   language_model: bool = False) -> MemoryFigures:
    """The working set under the model's deployment-like workload: ``INFERENCES`` inferences of the speed input;
    for a language model, what serving does: one prompt evaluated computing only its last position's logits, then
    ``GENERATED_TOKENS`` tokens generated with the KV cache (never every position's logits, a buffer of prompt x
    vocabulary floats that only evaluation needs). The runtime's own report of its buffers (weights, KV cache,
    compute, output; llama.cpp) is kept next to the measured figure."""
    samples: list[int] = []
    last: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    mapped: list[int | None] = []
    for _ in range(measure.memory_repeats):
        with open_worker(role, ref, measure.timeout_s) as worker:
            loaded = worker.call("load", ref=ref)
            worker.call("feeds", key="mem", arrays=feeds)
            if language_model:
                worker.call("run", key="mem", iterations=1, mode="prompt")
                worker.call("run", key="mem", iterations=GENERATED_TOKENS, mode="decode")
            else:
                worker.call("run", key="mem", iterations=INFERENCES)
            last = worker.call("memory")
        samples.append(last["peak"] - last["rss_before"])
        mapped.append(last["mapped_model"])
    value = int(np.median(samples))
    mapped_value = None if None in mapped else int(np.median([m or 0 for m in mapped]))
    return {
        "model_bytes": value, "samples": samples, "min": min(samples), "max": max(samples),
        "mapped_model_bytes": mapped_value,
        "model_bytes_without_mapped": None if mapped_value is None else max(value - mapped_value, 0),
        "counts_mapped_weights": True,
        "rss_before": last["rss_before"], "peak": last["peak"], "peak_reset": last["peak_reset"],
        "file_bytes": model_files_bytes(ref), "executed_device": loaded["executed_device"],
        "method": "VmHWM after reset minus RSS before load" if last["peak_reset"] else "ru_maxrss minus RSS before",
        "workload": (f"one {next(iter(feeds.values())).shape[-1]}-token prompt (last position's logits only), then "
                     f"{GENERATED_TOKENS} tokens generated with the KV cache" if language_model
                     else f"{INFERENCES} inferences of the speed input"),
        "reported_buffers": dict(loaded.get("info", {}).get("buffers") or {}),
    }
