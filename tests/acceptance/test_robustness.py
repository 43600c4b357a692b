"""The robustness gate for real: ONNX Runtime and OpenVINO answer bad inputs with clear errors or safe results and
keep serving; a runtime that crashes on NaN, one that hangs on an empty batch, one that silently drops extra
features, and a dynamically quantized model whose one +Inf spoils the whole batch fail (every other probe still
judged); a tiny LLaMA on llama.cpp passes the language-model probes; MLX broadcasts what ONNX Runtime rejects."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

FAULTY = "tests.helpers.faulty_fallback:"
REPO = str(Path(__file__).resolve().parents[2])  # the faulty backends live in tests.helpers
HANG_S = 6
LLM_PLAN = """
name = "tiny-llm"
[measure]
threads = 1

[[models]]
name = "tiny-llama"
[models.dataset]
text = "eval.txt"
context = 32
chunks = 2
[models.baseline]
name = "f32"
path = "tiny-llama-f32.gguf"
framework = "llamacpp"

[[models.candidates]]
name = "f32-again"
path = "tiny-llama-f32.gguf"
framework = "llamacpp"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("robustness"))


def certify(folder: Path, name: str, text: str) -> Outcome:
    plan = folder / f"{name}.toml"
    plan.write_text(text)
    (folder / name).mkdir()
    return run_certification(folder / name, plan, "-m", "robustness", env={"PYTHONPATH": REPO})


def probes(outcome: Outcome, name: str) -> dict[str, dict[str, Any]]:
    record = next(r for r in outcome.evidence() if r["candidate"] == name and r["gate"] == "robustness")
    return {p["name"]: p for p in record["measurement"]["probes"]}


def test_onnxruntime_is_robust_and_faulty_runtimes_are_caught(project: Path) -> None:
    quick = PLAN.replace("threads = 1", f"threads = 1\ntimeout_s = {HANG_S}")  # a probe with no answer by then hung
    outcome = certify(project, "ort", quick + candidate("fp32", "fp32.onnx") + candidate("int8", "int8.onnx")
                      + candidate("nan-crash", "fp32.onnx", FAULTY + "CrashesOnNaN")
                      + candidate("truncates", "fp32.onnx", FAULTY + "SilentlyTruncates")
                      + candidate("hangs", "fp32.onnx", FAULTY + "HangsOnEmptyBatch"))
    v = outcome.verdicts()
    assert v[("fp32", "robustness")]["verdict"] == "pass", v[("fp32", "robustness")]
    fp32 = probes(outcome, "fp32")
    assert fp32["wrong feature size"]["outcome"] == "clear error"
    assert "Got invalid dimensions for input: x" in fp32["wrong feature size"]["note"]
    assert fp32["NaN input"]["outcome"] == "safe result" and "non-finite outputs (flagged)" in fp32["NaN input"]["note"]
    assert fp32["empty batch"]["note"] == "an empty answer of the right shape (0, 4)"
    assert all(p["serving_after"] == "ok" for p in fp32.values())

    assert v[("int8", "robustness")]["verdict"] == "pass"  # served one request at a time: no batch-mates to spoil
    batched = certify(project, "batched", quick.replace('path = "data.npz"', 'path = "data.npz"\nspeed_batch_size = 8')
                      + candidate("int8", "int8.onnx"))
    int8 = batched.verdicts()[("int8", "robustness")]  # dynamic quantization: one activation range per batch
    assert int8["verdict"] == "fail" and int8["reason"].startswith("unsafe: +Inf input")
    assert "made non-finite" in probes(batched, "int8")["+Inf input"]["note"] and "batched" in int8["hint"]

    crash = v[("nan-crash", "robustness")]
    assert crash["verdict"] == "fail" and crash["reason"].startswith("unsafe: NaN input")
    crashed = probes(outcome, "nan-crash")
    assert "died with signal SIGSEGV" in crashed["NaN input"]["note"]
    assert crashed["NaN input"]["serving_after"] == "worker died (restarted)"
    assert crashed["empty batch"]["outcome"] == "safe result"  # the probes after the crash still ran
    assert "supervised process" in crash["hint"]

    truncates = v[("truncates", "robustness")]
    assert truncates["verdict"] == "fail" and truncates["reason"].startswith("unsafe: wrong feature size")
    assert probes(outcome, "truncates")["wrong feature size"]["note"] == "accepted silently: answered (1, 4)"

    hangs = v[("hangs", "robustness")]
    assert hangs["verdict"] == "fail" and hangs["reason"].startswith("unsafe: empty batch")
    hung = probes(outcome, "hangs")
    assert hung["empty batch"]["note"] == f"hung: no answer within {HANG_S} s"
    assert hung["oversized batch"]["outcome"] == "safe result"  # the worker was restarted for the next probe
    assert outcome.returncode == 1


def test_openvino_converts_or_rejects_every_bad_input(project: Path) -> None:
    pytest.importorskip("openvino")
    outcome = certify(project, "openvino", PLAN + candidate("ov", "fp32.onnx", "openvino"))
    result = outcome.verdicts()[("ov", "robustness")]
    assert result["verdict"] == "pass", result
    found = probes(outcome, "ov")
    assert found["wrong float dtype"]["outcome"] == "safe result"  # OpenVINO converts float64, same answer
    assert found["extra dimension"]["outcome"] == "clear error"
    assert found["extra dimension"]["note"].startswith("RuntimeError: Can't set the input tensor")  # no C++ paths


def test_llamacpp_rejects_bad_prompts_clearly(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tests.helpers.tinyllama import tiny_llama

    for name in ("tiny-llama-f32.gguf", "eval.txt"):
        shutil.copyfile(tiny_llama() / name, tmp_path / name)
    outcome = certify(tmp_path, "llm", LLM_PLAN)
    result = outcome.verdicts()[("f32-again", "robustness")]
    assert result["verdict"] == "pass", result
    found = probes(outcome, "f32-again")
    assert set(found) == {"1-D tokens", "float token ids", "string array", "over-long prompt", "empty prompt",
                          "token id past the vocabulary", "negative token id", "invalid UTF-8 text"}
    assert "but the context holds n_ctx = 512" in found["over-long prompt"]["note"]
    assert "(the vocabulary)" in found["token id past the vocabulary"]["note"]
    assert found["invalid UTF-8 text"]["note"].startswith("UnicodeEncodeError")


def test_mlx_broadcasts_extra_dimensions_and_a_string_array_is_an_unclear_error(tmp_path: Path) -> None:
    pytest.importorskip("mlx.core")
    import numpy as np

    from tests.helpers.mlx_models import mlp_folder

    mlp_folder(tmp_path / "mlp")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    text = PLAN.replace('metric = "top1_accuracy"', 'metric = "top1_agreement"').replace(
        'path = "fp32.onnx"\nframework = "onnxruntime"', 'path = "mlp"\nframework = "mlx"')
    outcome = certify(tmp_path, "mlx", text + candidate("mlp", "mlp", "mlx"))
    result = outcome.verdicts()[("mlp", "robustness")]
    assert result["verdict"] == "pass", result
    found = probes(outcome, "mlp")
    assert found["extra dimension"]["outcome"] == "safe result"  # (1, 8, 64) -> (1, 8, 10), the same rows
    assert found["string array"]["outcome"] == "unclear error" and "std::bad_cast" in found["string array"]["note"]
    assert "string array: unclear error (RuntimeError: std::bad_cast)" in result["reason"]
