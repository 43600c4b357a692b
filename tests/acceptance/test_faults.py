"""Bad input and faults through the real suites: a clear error for a bad plan, and a broken candidate
(corrupt file, segfaulting runtime, wrong dataset) fails alone while the other results are kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.acceptance.conftest import run_certification, timed
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_project(tmp_path_factory.mktemp("tiny"))
    (folder / "corrupt.onnx").write_bytes((folder / "int8.onnx").read_bytes()[:300])
    x = np.load(folder / "data.npz")["x"]
    np.savez(folder / "wide.npz", x=np.concatenate([x, x[:, :3]], axis=1), y=np.load(folder / "data.npz")["y"])
    return folder


def plan_in(folder: Path, text: str) -> Path:
    path = folder / "certify.toml"
    path.write_text(text)
    return path


def test_malformed_plan_is_a_usage_error_naming_file_and_key(project: Path, tmp_path: Path) -> None:
    plan = plan_in(tmp_path, PLAN.replace('path = "', f'path = "{project}/') + candidate(
        "int8", f"{project}/int8.onnx", extra='devce = "cpu"'))
    outcome = run_certification(tmp_path, plan)
    assert outcome.returncode == 4  # pytest's usage error
    assert f"{plan}: models[0].candidates[0].devce: unknown key (did you mean 'device'?)" in outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_broken_candidates_fail_alone_and_the_good_ones_keep_their_results(project: Path, tmp_path: Path) -> None:
    text = (PLAN + candidate("int8", "int8.onnx") + candidate("corrupt", "corrupt.onnx")
            + candidate("segfault", "int8.onnx", framework="tests.helpers.faulty:SegfaultOnLoad"))
    outcome = run_certification(tmp_path, plan_in(project, text), "-k", "accuracy or memory")
    v = outcome.verdicts()
    assert v[("int8", "accuracy")]["verdict"] == "pass" and v[("int8", "memory")]["verdict"] in ("pass", "fail")
    corrupt = v[("corrupt", "accuracy")]
    assert corrupt["verdict"] == "fail" and "onnxruntime could not load" in corrupt["reason"]
    assert "corrupt.onnx" in corrupt["reason"] and "Traceback" not in corrupt["reason"]
    crashed = v[("segfault", "memory")]
    assert crashed["verdict"] == "fail" and "died with signal SIGSEGV during 'load'" in crashed["reason"]
    assert outcome.results["candidates"]["tiny/int8"] in ("certified", "not_certified")
    assert len(outcome.results["cases"]) == 6 and outcome.returncode == 1


def test_dataset_shape_mismatch_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    shutil.copy(project / "wide.npz", tmp_path / "data.npz")
    for name in ("fp32.onnx", "int8.onnx"):
        shutil.copy(project / name, tmp_path / name)
    outcome = run_certification(tmp_path, plan_in(tmp_path, PLAN + candidate("int8", "int8.onnx")), "-k", "accuracy")
    result = outcome.verdicts()[("int8", "accuracy")]
    assert result["verdict"] == "error"
    assert "dataset shape (128, 19) does not fit the model's ('batch', 16)" in result["reason"]
    assert "baseline" in result["reason"] and outcome.returncode == 1


def test_parallel_run_serializes_speed_and_memory(project: Path, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    text = PLAN + candidate("int8", "int8.onnx") + candidate("again", "int8.onnx")
    outcome = run_certification(tmp_path, plan_in(project, text), "-n", "2", "-m",
                                "accuracy or speed or stability or memory")
    assert len(outcome.results["cases"]) == 8, outcome.stdout
    records = [r for r in outcome.evidence() if r["result"]["verdict"] != "not_evaluated"]
    assert len(records) == 8
    exclusive = [r for r in records if r["serialized"]]
    assert {r["gate"] for r in exclusive} == {"speed", "stability", "memory"}
    for r in exclusive:  # no other measurement overlapped an exclusive one in time
        for other in records:
            if other is not r:
                assert other["finished"] <= r["started"] or other["started"] >= r["finished"], (r["case"], r["gate"])


def test_a_candidate_that_is_the_baseline_again_is_refused_on_speed_and_memory(project: Path, tmp_path: Path) -> None:
    """A "no-op optimization" (the FP32 file itself) keeps all its accuracy but is neither faster nor smaller."""
    outcome = run_certification(tmp_path, plan_in(project, PLAN + candidate("same", "fp32.onnx")))
    v = outcome.verdicts()
    assert v[("same", "accuracy")]["verdict"] == "pass" and v[("same", "accuracy")]["value"] == 1.0
    speed = v[("same", "speed")]
    # (the point ratio of a file against itself is about 1 on a quiet host; a CI host under load measured 2.14x
    # [1.93x, ...]: the verdict, which is on the interval's lower bound, is what must hold on any host)
    assert timed(speed) == "not_judged" or (speed["verdict"] == "fail" and speed["interval"][0] < 2.0), speed
    memory = v[("same", "memory")]
    assert memory["verdict"] == "fail" and memory["value"] < 0.5
    assert outcome.results["candidates"]["tiny/same"] == "not_certified" and outcome.returncode == 1


def test_a_missing_device_is_not_evaluated_or_failed_as_the_plan_demands(project: Path, tmp_path: Path) -> None:
    gpu = 'device = "gpu"\nproviders = ["CUDAExecutionProvider"]'
    text = (PLAN + candidate("cuda-skip", "int8.onnx", extra=gpu)
            + candidate("cuda-required", "int8.onnx", extra=gpu + '\nmissing_device = "fail"'))
    outcome = run_certification(tmp_path, plan_in(project, text), "-k", "accuracy")
    v = outcome.verdicts()
    if v[("cuda-skip", "accuracy")]["verdict"] != "not_evaluated":
        pytest.skip("this host has CUDA")
    assert "CUDAExecutionProvider is not available" in v[("cuda-skip", "accuracy")]["reason"]
    required = v[("cuda-required", "accuracy")]
    assert required["verdict"] == "fail" and required["reason"].startswith("required device missing: ")
    assert "CUDAExecutionProvider is not available" in required["reason"] and outcome.returncode == 1
