"""The fallback gate's pieces without a certification run: which device a candidate prefers and which one ran,
output agreement, the corrupted copy, each scenario's judgement and the gate's verdict over the three."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from certify.errors import ModelError, WorkerCrashed
from certify.gates import fallback as fb
from certify.measure.probes import fail_next_infer
from certify.plan import ModelRef
from certify.policy import POLICIES

POLICY = POLICIES["edge-default"].with_overrides({"max_recovery_s": 5.0})


def ref(device: str = "cpu", providers: tuple[str, ...] = (), **kw: Any) -> ModelRef:
    return ModelRef(name="c", path=Path("m.onnx"), framework="onnxruntime", device=device, providers=providers, **kw)


@pytest.mark.parametrize(("device", "providers", "preferred"), [
    ("gpu", (), "gpu"), ("AUTO:NPU,CPU", (), "NPU"), ("HETERO:GPU.1,CPU", (), "GPU.1"), ("AUTO:-CPU,GPU", (), "GPU"),
    ("gpu", ("CUDAExecutionProvider", "CPUExecutionProvider"), "CUDAExecutionProvider"),
])
def test_the_preferred_device_is_the_first_one_asked_for(device: str, providers: tuple[str, ...],
                                                         preferred: str) -> None:
    assert fb.preferred_device(ref(device, providers)) == preferred


@pytest.mark.parametrize(("executed", "info", "device"), [
    ("CPUExecutionProvider", {"device": "cpu"}, "cpu"), ("(CPU)", {}, "cpu"), ("GPU.0,CPU", {}, "gpu"),
    ("GPU (33 of 33 layers offloaded)", {"device": "gpu"}, "gpu"), ("MysteryEP", {"device": "unknown"}, "unknown"),
])
def test_the_executed_device_class_comes_from_the_backend(executed: str, info: dict[str, Any], device: str) -> None:
    assert fb.executed_class(executed, info) == device


def test_a_missing_device_is_what_the_runner_or_the_backend_says() -> None:
    pytest.importorskip("onnxruntime")
    run: Any = SimpleNamespace(cannot_run=lambda r: "")
    cuda = ref("gpu", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has CUDA")
    assert "CUDAExecutionProvider is not available" in fb.missing_device(run, cuda)
    assert fb.missing_device(SimpleNamespace(cannot_run=lambda r: "framework gone"), cuda) == "framework gone"
    assert fb.missing_device(run, ref("cpu")) == ""


def test_agreement_is_within_tolerance_and_needs_the_same_shape() -> None:
    a = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    assert fb.agreement(a + 1e-5, a, fb.DEVICE_TOLERANCE)[0]
    ok, diff = fb.agreement(a + 0.1, a, fb.DEVICE_TOLERANCE)
    assert not ok and diff == pytest.approx(0.1, rel=1e-3)
    assert fb.agreement(a[:2], a, fb.SAME_TOLERANCE) == (False, float("inf"))


def test_the_corrupted_copy_truncates_every_file_of_the_model(tmp_path: Path) -> None:
    (tmp_path / "ir").mkdir()
    xml, bins = tmp_path / "ir" / "m.xml", tmp_path / "ir" / "m.bin"
    xml.write_bytes(b"x" * 100)
    bins.write_bytes(b"b" * 1000)
    broken = fb.corrupted_copy(ModelRef("c", xml, "openvino", sha256="0" * 64), tmp_path / "out")
    assert broken.path == tmp_path / "out" / "m.xml" and broken.sha256 is None
    assert broken.file.stat().st_size == 50 and (tmp_path / "out" / "m.bin").stat().st_size == 500
    assert xml.stat().st_size == 100  # the original is untouched
    folder = tmp_path / "mlx"
    folder.mkdir()
    (folder / "model.json").write_text("{}" * 10)
    (folder / "weights.safetensors").write_bytes(b"w" * 64)
    copy = fb.corrupted_copy(ModelRef("c", folder, "mlx"), tmp_path / "out2")
    assert sorted(p.stat().st_size for p in copy.file.iterdir()) == [10, 32]


def test_a_refusal_is_right_only_when_the_plan_forbids_a_fallback() -> None:
    error = ModelError("OpenVINO could not compile m.onnx for device 'AUTO:GPU,CPU': Cannot load library",
                       hint="install the GPU runtime")
    strict = fb.refused(ref("AUTO:GPU,CPU", device_fallback=False), "GPU", error, {})
    assert strict.verdict == fb.PASS and "refused to run without GPU" in strict.reason
    lenient = fb.refused(ref("AUTO:GPU,CPU"), "GPU", error, {})
    assert lenient.verdict == fb.FAIL and lenient.reason.startswith("no fallback")
    assert lenient.hint.startswith("install the GPU runtime; ") and lenient.evidence["error"].startswith("OpenVINO")
    crash = fb.refused(ref("gpu", device_fallback=False), "gpu", WorkerCrashed("died with signal SIGSEGV"), {})
    assert crash.verdict == fb.FAIL and "crashed" in crash.reason


def load_evidence(**kw: Any) -> dict[str, Any]:
    return {"error_type": "ModelError", "error": "could not load", "crashed": False, "clear": True,
            "recovery_s": 0.5, "first_answer_correct": True, "outputs_match": True, "max_abs_difference": 0.0, **kw}


@pytest.mark.parametrize(("evidence", "verdict", "words"), [
    (load_evidence(), fb.PASS, "fallback 'baseline' served correct answers 0.50 s later"),
    (load_evidence(crashed=True, clear=False), fb.FAIL, "crashed the process"),
    (load_evidence(clear=False), fb.FAIL, "raised an unexplained error"),
    (load_evidence(outputs_match=False, max_abs_difference=0.3), fb.FAIL, "differ from its own"),
    (load_evidence(recovery_s=9.0), fb.FAIL, "more than max_recovery_s 5 s"),
])
def test_load_failure_judgement(evidence: dict[str, Any], verdict: str, words: str) -> None:
    scenario = fb.judge_load_failure("baseline", evidence, POLICY)
    assert scenario.verdict == verdict and words in scenario.reason, scenario.reason


def recovery_evidence(**kw: Any) -> dict[str, Any]:
    return {"recovery_s": 1.2, "load_s": 0.1, "first_answer_correct": True, "outputs_match": True,
            "max_abs_difference": 0.0, "in_process_fault": {"raised": "injected", "next_request_ok": True}, **kw}


@pytest.mark.parametrize(("evidence", "verdict", "words"), [
    (recovery_evidence(), fb.PASS, "a fresh worker answered correctly 1.20 s (load 0.10 s) later, within 5 s"),
    (recovery_evidence(recovery_s=7.5, load_s=7.0), fb.FAIL, "took 7.50 s (load 7.00 s), more than max_recovery_s 5"),
    (recovery_evidence(outputs_match=False, max_abs_difference=1.0), fb.FAIL, "differ from before the fault"),
    (recovery_evidence(in_process_fault={"raised": "x", "next_request_ok": False, "note": "it died"}), fb.FAIL,
     "next request was not served correctly (it died)"),
])
def test_recovery_judgement(evidence: dict[str, Any], verdict: str, words: str) -> None:
    scenario = fb.judge_recovery(evidence, POLICY)
    assert scenario.verdict == verdict and words in scenario.reason, scenario.reason


def test_the_gate_fails_on_any_applicable_failure_and_is_not_evaluated_when_none_applies() -> None:
    na = fb.Scenario(fb.NOT_APPLICABLE, "the candidate asks for the CPU")
    ok = fb.Scenario(fb.PASS, "fresh worker in 1 s", evidence={"recovery_s": 1.0})
    bad = fb.Scenario(fb.FAIL, "silent fallback to CPU forbidden by the plan", hint="refuse to serve")
    passed = fb.combine({"device": na, "load_failure": na, "recovery": ok}, POLICY)
    assert passed.verdict == "pass" and passed.value == 1.0 and passed.threshold == 5.0 and passed.unit == "s"
    assert passed.reason.startswith("device fallback: not applicable (the candidate asks for the CPU)")
    failed = fb.combine({"device": bad, "load_failure": na, "recovery": ok}, POLICY, "backend hint")
    assert failed.verdict == "fail" and failed.reason.startswith("device fallback failed -- ")
    assert failed.hint == "refuse to serve; backend hint" and failed.details["device"] == fb.FAIL
    nothing = fb.combine({"device": na, "load_failure": na, "recovery": na}, POLICY)
    assert nothing.verdict == "not_evaluated" and "no fallback scenario applies" in nothing.reason


def test_an_injected_fault_fails_one_inference_only() -> None:
    class Backend:
        def infer(self, feeds: Any) -> list[np.ndarray]:
            return [np.ones(2)]

    worker: Any = SimpleNamespace(backend=Backend())
    fail_next_infer(worker)
    with pytest.raises(RuntimeError, match="injected fault"):
        worker.backend.infer({})
    assert worker.backend.infer({})[0].tolist() == [1.0, 1.0]
