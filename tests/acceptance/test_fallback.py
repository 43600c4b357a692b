"""The fallback gate for real: a candidate with a configured fallback model passes all that applies, one that is
slow to come back after a crash fails, an OpenVINO AUTO:NPU,CPU deployment falls back to the CPU here (and fails
when the plan forbids it), and so do an ONNX Runtime candidate that asks for CUDA and a llama.cpp one that asks
for GPU offload on a CPU-only build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

FAULTY = "tests.helpers.faulty_fallback:"
REPO = str(Path(__file__).resolve().parents[2])  # the faulty backends live in tests.helpers


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("fallback"))


def certify(project: Path, name: str, candidates: str) -> Outcome:
    plan = project / f"{name}.toml"
    plan.write_text(PLAN + candidates)
    folder = project / name
    folder.mkdir()
    return run_certification(folder, plan, "-m", "fallback", env={"PYTHONPATH": REPO})


def scenarios(outcome: Outcome, name: str) -> dict[str, Any]:
    record = next(r for r in outcome.evidence() if r["candidate"] == name and r["gate"] == "fallback")
    assert record["serialized"]  # fallback times a recovery: it holds the exclusive measurement lock
    return dict(record["measurement"]["scenarios"])


def test_a_configured_fallback_serves_and_a_slow_restart_fails(project: Path) -> None:
    outcome = certify(project, "ort", candidate("int8", "int8.onnx", extra='fallback = "baseline"')
                      + candidate("slow", "fp32.onnx", framework=FAULTY + "SlowToRecover",
                                  extra="policy = { max_recovery_s = 1 }"))
    v = outcome.verdicts()
    assert v[("int8", "fallback")]["verdict"] == "pass", v[("int8", "fallback")]
    int8 = scenarios(outcome, "int8")
    assert int8["device"]["verdict"] == "not_applicable"
    load = int8["load_failure"]
    assert load["verdict"] == "pass" and "onnxruntime could not load" in load["evidence"]["error"]
    assert load["evidence"]["outputs_match"] and load["evidence"]["recovery_s"] < 30
    assert int8["recovery"]["verdict"] == "pass" and int8["recovery"]["evidence"]["in_process_fault"]["raised"]
    slow = v[("slow", "fallback")]
    assert slow["verdict"] == "fail" and "more than max_recovery_s 1 s" in slow["reason"]
    assert slow["value"] > 2.0 and slow["threshold"] == 1 and "warm standby" in slow["hint"]
    assert scenarios(outcome, "slow")["load_failure"]["reason"].startswith("the plan names no fallback model")
    assert outcome.returncode == 1


def test_openvino_auto_falls_back_to_the_cpu_unless_the_plan_forbids_it(project: Path) -> None:
    pytest.importorskip("openvino")
    auto = 'device = "AUTO:NPU,CPU"'
    outcome = certify(project, "openvino", candidate("npu", "fp32.onnx", "openvino", auto)
                      + candidate("npu-strict", "fp32.onnx", "openvino", auto + "\ndevice_fallback = false"))
    v = outcome.verdicts()
    assert v[("npu", "fallback")]["verdict"] == "pass", v[("npu", "fallback")]
    device = scenarios(outcome, "npu")["device"]
    assert "fell back from NPU to CPU (CPU), outputs match the CPU reference" in device["reason"]
    assert device["evidence"]["executed_device"] == "CPU" and "NPU is not available" in device["evidence"]["missing"]
    strict = v[("npu-strict", "fallback")]
    assert strict["verdict"] == "fail" and "silent fallback to CPU forbidden by the plan" in strict["reason"]


def evaluate_directly(plan_file: Path, run_dir: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each candidate's fallback gate evaluated without the runner's device check: the runner leaves a case whose
    device is missing NOT EVALUATED before any gate runs, which for this gate hides the very scenario it certifies."""
    from certify.cases import cases_for
    from certify.gates import fallback
    from certify.hardware import detect_host
    from certify.plan.load import load_plan
    from certify.runner import CertificationRun

    plan = load_plan(plan_file)
    run = CertificationRun(plan, run_dir, detect_host(), "t")
    results = {}
    for case in cases_for(plan, "fallback"):
        ctx = run.context(case)
        results[case.candidate.name] = fallback.evaluate(ctx), ctx.measurement["scenarios"]
    return results


def test_onnxruntime_asking_for_cuda_falls_back_to_the_cpu(project: Path, tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has CUDA: nothing falls back")
    cuda = 'device = "gpu"\nproviders = ["CUDAExecutionProvider", "CPUExecutionProvider"]'
    plan_file = project / "cuda.toml"
    plan_file.write_text(PLAN + candidate("cuda", "int8.onnx", extra=cuda)
                         + candidate("cuda-strict", "int8.onnx", extra=cuda + "\ndevice_fallback = false"))
    results = evaluate_directly(plan_file, tmp_path / "run")
    passed, found = results["cuda"]
    assert passed.verdict == "pass" and "fell back from GPU to CPU (CPUExecutionProvider)" in passed.reason
    assert found["device"]["evidence"]["preferred"] == "CUDAExecutionProvider"
    failed, _ = results["cuda-strict"]
    assert failed.verdict == "fail" and "silent fallback to CPU forbidden by the plan" in failed.reason
    assert "get_providers()" in failed.hint


def test_llamacpp_offload_on_a_cpu_build_runs_on_the_cpu(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    import shutil

    from tests.helpers.tinyllama import tiny_llama

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build offloads to a GPU")
    for name in ("tiny-llama-f32.gguf", "eval.txt"):
        shutil.copyfile(tiny_llama() / name, tmp_path / name)
    gguf = '\npath = "tiny-llama-f32.gguf"\nframework = "llamacpp"\n'
    (tmp_path / "llm.toml").write_text(
        '[[models]]\nname = "tiny-llama"\n[models.dataset]\ntext = "eval.txt"\ncontext = 32\nchunks = 2\n'
        f'[models.baseline]{gguf}[[models.candidates]]\nname = "gpu"{gguf}device = "gpu"\nfallback = "baseline"\n')
    result, found = evaluate_directly(tmp_path / "llm.toml", tmp_path / "run")["gpu"]
    assert result.verdict == "pass", result
    assert found["device"]["evidence"]["executed_device"] == "CPU"
    assert "data is not within the file bounds" in found["load_failure"]["evidence"]["error"]
