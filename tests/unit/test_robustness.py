"""The robustness gate's judging, without processes: error messages read down to what they say, answers judged
against what they should be, the in-worker probes run on a small numpy backend, and the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from certify.backends.base import TensorSpec
from certify.errors import ModelError
from certify.gates import robustness as rb
from certify.measure import probes
from certify.plan import Layout

PROBES = {p.name: p for p in (*rb.ARRAY_PROBES, *rb.LANGUAGE_MODEL_PROBES)}


class Linear:
    """A backend as numpy would be one: ``x @ w``; ``strict`` rejects what does not fit the model's input."""

    def __init__(self, strict: bool = False) -> None:
        self.w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
        self.strict = strict

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("x", ("batch", 16), "float32")]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        if self.strict and (x.ndim != 2 or x.shape[1] != 16 or x.dtype != np.float32):
            raise ModelError(f"input 'x': got {x.dtype} {x.shape}, the model takes float32 [batch, 16]")
        return [np.asarray(x @ self.w)]


class BatchScaled(Linear):
    """Couples the batch like dynamic quantization: one scale for the whole batch, so an Inf spoils every row."""

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        scale = np.abs(x).max() if x.size else 1.0
        with np.errstate(invalid="ignore"):
            return [np.asarray((x / scale) @ self.w * scale)]


class Echo:
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("x", ("n",), "int64")]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(feeds["x"])]


def worker_for(backend: Any) -> Any:
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    return SimpleNamespace(backend=backend, feeds={"valid": {"x": x}}, layout=Layout(), output_names=lambda: [])


def run(worker: Any, name: str, rows: int = 64) -> tuple[str, str]:
    seen = probes.probe(worker, name, "valid", {"rows": rows, "n_ctx": None})
    return rb.classify(PROBES[name], seen)


def test_first_line_skips_cpp_locations_and_blank_lines() -> None:
    text = ("Exception from src/inference/src/cpp/infer_request.cpp:75:\n\nCheck 'shape.compatible(x)' failed at "
            "src/plugins/intel_cpu/src/infer_request.cpp:385:\nCan't set the input tensor with index: 0\n")
    assert rb.first_line(text) == "Can't set the input tensor with index: 0"
    assert rb.first_line("") == ""


def test_same_allows_float_rounding_and_unit_dimensions_but_not_other_values() -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert rb.same([a[None]], [a]) and rb.same([a + 1e-6], [a])
    assert not rb.same([a + 0.1], [a]) and not rb.same([a[:1]], [a]) and not rb.same([a, a], [a])
    assert not rb.same([np.array(["x"] * 8)], [a])


def test_a_clear_error_is_ours_or_short_and_names_the_problem() -> None:
    shape = PROBES["wrong feature size"]
    ort = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following indices"
    assert rb.is_clear(shape, {"message": ort})
    assert rb.is_clear(shape, {"message": "whatever it says", "ours": True})
    assert not rb.is_clear(PROBES["string array"], {"message": "std::bad_cast"})
    assert not rb.is_clear(shape, {"message": "shape " + "x" * rb.MAX_CLEAR_CHARS})
    outcome, note = rb.classify(PROBES["string array"], {"raised": True, "error_type": "RuntimeError",
                                                         "message": "std::bad_cast"})
    assert (outcome, note) == (rb.UNCLEAR, "RuntimeError: std::bad_cast")


@pytest.mark.parametrize(("name", "seen", "outcome", "words"), [
    ("wrong feature size", {"outputs": [{"shape": [8, 4]}]}, rb.UNSAFE, "accepted silently: answered (8, 4)"),
    ("token id past the vocabulary", {"outputs": [{"shape": [1, 16, 260]}]}, rb.UNSAFE, "accepted silently"),
    ("wrong float dtype", {"outputs": [{"shape": [8, 4]}], "matches": True}, rb.SAFE, "same answer"),
    ("extra dimension", {"outputs": [{"shape": [1, 8, 4]}], "matches": False}, rb.UNSAFE, "not the answer"),
    ("NaN input", {"outputs": [{"shape": [8, 4]}], "shapes_ok": True, "rows_poisoned": True, "rows_drift": 0.0},
     rb.UNSAFE, "changed the other rows' answers: made non-finite"),
    ("+Inf input", {"outputs": [{"shape": [8, 4]}], "shapes_ok": True, "rows_poisoned": False, "rows_drift": 0.2},
     rb.UNSAFE, "moved by 20.0%"),
    ("NaN input", {"outputs": [{"shape": [8, 4]}], "shapes_ok": True, "rows_poisoned": False, "rows_drift": 0.01,
                   "finite": False}, rb.SAFE, "non-finite outputs (flagged)"),
    ("empty batch", {"outputs": [{"shape": [1, 4]}], "shapes_ok": False, "expected_shapes": [[0, 4]]}, rb.UNSAFE,
     "answered (1, 4) where (0, 4) was due"),
    ("empty batch", {"outputs": [{"shape": [0, 4]}], "shapes_ok": True}, rb.SAFE, "empty answer"),
    ("over-long prompt", {"outputs": [{"shape": [1, 512, 260]}], "shapes_ok": False,
                          "expected_shapes": [[1, 513, 260]]}, rb.UNSAFE, "truncated silently"),
    ("oversized batch", {"outputs": [{"shape": [4096, 4]}], "shapes_ok": True, "rows_poisoned": False,
                         "rows_drift": 0.0}, rb.SAFE, "answered (4096, 4)"),
    ("invalid UTF-8 text", {"outputs": [{"shape": [1, 9, 256]}], "shapes_ok": True, "tokens": 9}, rb.SAFE,
     "tokenized to 9 tokens"),
])
def test_an_answer_is_safe_only_with_its_documented_meaning(name: str, seen: dict[str, Any], outcome: str,
                                                            words: str) -> None:
    got, note = rb.classify(PROBES[name], {"raised": False, "finite": True, **seen})
    assert got == outcome and words in note, note


def test_probes_on_a_lenient_runtime_find_what_it_accepts() -> None:
    worker = worker_for(Linear())
    assert run(worker, "extra dimension")[0] == rb.SAFE  # numpy broadcasts: the same rows come back
    assert run(worker, "missing dimension")[0] == rb.SAFE
    outcome, note = run(worker, "wrong feature size")
    assert outcome == rb.CLEAR and "ValueError" in note  # numpy's matmul names the mismatched dimension
    assert run(worker, "wrong float dtype")[0] == rb.SAFE
    assert run(worker, "wrong int dtype")[0] == rb.SAFE
    outcome, note = run(worker, "NaN input")
    assert outcome == rb.SAFE and "non-finite" in note and "other rows unchanged" in note
    assert run(worker, "empty batch") == (rb.SAFE, "an empty answer of the right shape (0, 4)")
    assert run(worker, "oversized batch", rows=100)[0] == rb.SAFE


def test_probes_on_a_strict_runtime_are_clear_errors() -> None:
    worker = worker_for(Linear(strict=True))
    for name in ("extra dimension", "missing dimension", "wrong feature size", "wrong float dtype",
                 "wrong int dtype", "string array"):
        outcome, note = run(worker, name)
        assert outcome == rb.CLEAR and note.startswith("ModelError: input 'x'"), (name, note)


def test_a_batch_coupled_runtime_lets_one_inf_spoil_the_other_rows() -> None:
    outcome, note = run(worker_for(BatchScaled()), "+Inf input")
    assert outcome == rb.UNSAFE and "other rows' answers: made non-finite" in note


def test_a_probe_that_does_not_fit_the_model_is_not_applicable() -> None:
    worker = SimpleNamespace(backend=Echo(), feeds={"valid": {"x": np.arange(8, dtype=np.int64)}}, layout=Layout(),
                             output_names=lambda: [])
    assert rb.classify(PROBES["NaN input"], probes.probe(worker, "NaN input", "valid", {}))[0] == rb.NOT_APPLICABLE
    assert probes.probe(worker, "over-long prompt", "valid", {"n_ctx": None}) == {
        "skip": "the backend reports no context length (info()['n_ctx'])"}


def test_the_oversized_batch_is_bounded_by_memory() -> None:
    small = {"x": np.zeros((8, 16), np.float32)}
    assert rb.limits_for(small, {"info": {"n_ctx": 512}}) == {"rows": rb.OVERSIZED_ROWS, "valid_rows": 8,
                                                              "n_ctx": 512}
    wide = {"x": np.zeros((8, 3, 224, 224), np.float32)}  # 588 KiB a row: 445 rows fit in 256 MiB
    assert rb.limits_for(wide, {})["rows"] == rb.OVERSIZED_BYTES // (3 * 224 * 224 * 4)


def test_the_oversized_batch_is_bounded_by_compute() -> None:
    """At 0.5 s for 8 rows, 15 s buys 240 rows; at 10 s, twice the valid request's rows still go."""
    small = {"x": np.zeros((8, 16), np.float32)}
    assert rb.limits_for(small, {}, latency_s=0.5)["rows"] == 240
    assert rb.limits_for(small, {}, latency_s=10.0)["rows"] == 16


def result(name: str, outcome: str, note: str = "", serving: str = "ok") -> rb.ProbeResult:
    return rb.ProbeResult(name, outcome, note, serving_after=serving)


def test_the_verdict_fails_on_an_unsafe_probe_or_a_runtime_that_stops_serving() -> None:
    fine = [result("extra dimension", rb.CLEAR), result("empty batch", rb.SAFE, "an empty answer")]
    passed = rb.verdict(fine)
    assert passed.verdict == "pass" and "extra dimension: clear error; empty batch: safe result (an empty answer)" \
        in passed.reason
    crashed = rb.verdict([*fine, result("NaN input", rb.UNSAFE, "crashed the runtime: died with signal SIGSEGV",
                                        "worker died (restarted)")])
    assert crashed.verdict == "fail" and crashed.reason.startswith("unsafe: NaN input")
    assert "supervised process" in crashed.hint and crashed.details["empty batch"] == rb.SAFE
    stopped = rb.verdict([*fine, result("+Inf input", rb.SAFE, "", "wrong answer to a valid request")])
    assert stopped.verdict == "fail" and "stopped answering valid requests correctly after: +Inf input" \
        in stopped.reason and "restart or re-create" in stopped.hint
    assert rb.verdict([*fine, result("oversized batch", rb.PROBE_ERROR, "boom")]).verdict == "error"
    assert rb.verdict([result("string array", rb.UNCLEAR, "RuntimeError: std::bad_cast")]).verdict == "pass"


def test_the_hint_follows_the_failures() -> None:
    hint = rb.failure_hint([result("wrong feature size", rb.UNSAFE, "accepted silently: answered (8, 4)")],
                           "the backend's own hint")
    assert hint.startswith("check inputs against the model") and hint.endswith("the backend's own hint")
