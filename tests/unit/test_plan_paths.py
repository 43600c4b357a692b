"""Plan paths and numbers checked when the plan loads, the key named: symbolic-link loops, folders where a file is
expected, empty folders and special files (FIFO, device, socket) are refused; so are nan and inf anywhere."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from certify.errors import PlanError
from certify.plan.load import load_plan
from tests.helpers.models import PLAN, candidate, tiny_project

CANDIDATE = "models[0].candidates[0].path"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("plan-paths"))


def error_of(folder: Path, text: str) -> PlanError:
    (folder / "certify.toml").write_text(text)
    with pytest.raises(PlanError) as info:
        load_plan(folder / "certify.toml")
    assert "\n" not in info.value.message
    return info.value


def with_candidate(path: Path | str, framework: str = "onnxruntime") -> str:
    return PLAN + candidate("c", str(path), framework=framework)


def test_a_symlink_loop_as_the_model_path_is_named(project: Path, tmp_path: Path) -> None:
    (tmp_path / "a.onnx").symlink_to(tmp_path / "b.onnx")
    (tmp_path / "b.onnx").symlink_to(tmp_path / "a.onnx")
    err = error_of(project, with_candidate(tmp_path / "a.onnx"))
    assert err.key == CANDIDATE and "is a symbolic-link loop" in err.message


def test_a_folder_where_a_model_file_is_expected_is_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes((project / "int8.onnx").read_bytes())
    for framework in ("onnxruntime", "openvino", "olive", "llamacpp"):
        err = error_of(project, with_candidate(tmp_path / "model", framework))
        assert err.key == CANDIDATE and "is a folder, where a file is expected" in err.message
        assert "name the model file itself" in err.hint
        assert "a folder is a model only for framework mlx, transformers, ortgenai or ovgenai" in err.hint


def test_an_mlx_folder_is_taken_but_never_an_empty_one(project: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    err = error_of(project, with_candidate(tmp_path / "empty", "mlx"))
    assert err.key == CANDIDATE and "is an empty folder" in err.message
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "model.json").write_text("{}")
    (project / "certify.toml").write_text(with_candidate(tmp_path / "mlx", "mlx"))
    assert load_plan(project / "certify.toml").models[0].candidates[0].path == tmp_path / "mlx"


def test_a_gguf_given_to_mlx_is_refused_with_the_way_to_convert(project: Path, tmp_path: Path) -> None:
    (tmp_path / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    err = error_of(project, with_candidate(tmp_path / "gemma-3-270m-q4_k_m.gguf", "mlx"))
    assert err.key == CANDIDATE and "framework 'mlx' cannot read a .gguf file" in err.message
    assert 'framework = "llamacpp"' in err.hint and "mlx_lm convert --hf-path" in err.hint
    assert "not valid JSON" not in err.message + err.hint


def test_a_third_party_backend_may_take_a_folder(project: Path, tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "weights.bin").write_bytes(b"\0")
    (project / "certify.toml").write_text(with_candidate(tmp_path / "bundle", "my_runtime.backend:Backend"))
    assert load_plan(project / "certify.toml").models[0].candidates[0].path == tmp_path / "bundle"


@pytest.fixture
def special_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    os.mkfifo(tmp_path / "fifo")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "sock"))
    yield {"a FIFO (named pipe)": tmp_path / "fifo", "a socket": tmp_path / "sock",
           "a character device": Path("/dev/zero")}
    server.close()


def test_special_files_are_refused_as_model_and_dataset_paths(project: Path, special_files: dict[str, Path]) -> None:
    for kind, path in special_files.items():
        err = error_of(project, with_candidate(path))
        assert err.key == CANDIDATE and f"{path} is {kind}, not a regular file" in err.message
        err = error_of(project, with_candidate("int8.onnx").replace('path = "data.npz"', f'path = "{path}"'))
        assert err.key == "models[0].dataset.path" and "not a regular file" in err.message


def test_a_folder_or_a_link_loop_as_the_dataset_is_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "loop.npz").symlink_to(tmp_path / "loop.npz")
    for path, words in ((tmp_path / "data", "is a folder, where a file is expected"),
                        (tmp_path / "loop.npz", "is a symbolic-link loop")):
        err = error_of(project, with_candidate("int8.onnx").replace('path = "data.npz"', f'path = "{path}"'))
        assert err.key == "models[0].dataset.path" and words in err.message


def test_a_nul_in_a_path_is_named(project: Path) -> None:
    err = error_of(project, with_candidate("int8\\u0000.onnx"))
    assert err.key == CANDIDATE and "is not a usable path" in err.message


@pytest.mark.parametrize(("edit", "key", "number"), [
    (lambda t: "policy = { min_speedup = nan }\n" + t, "policy.min_speedup", "nan"),
    (lambda t: t + 'policy = { min_memory_reduction = -inf }\n', "models[0].candidates[0].policy.min_memory_reduction",
     "-inf"),
    (lambda t: t.replace("threads = 1", "threads = 1\ntimeout_s = inf"), "measure.timeout_s", "inf"),
    (lambda t: t + "\n[stress]\nrate = nan\n", "stress.rate", "nan"),
    (lambda t: t.replace('metric = "top1_accuracy"', 'metric = { name = "binary_agreement", threshold = nan }'),
     "models[0].metric.threshold", "nan"),
    (lambda t: t + "options = { session_config = { scales = [1.0, inf] } }\n",
     "models[0].candidates[0].options.session_config.scales[1]", "inf"),
])
def test_non_finite_numbers_are_refused_with_the_key(project: Path, edit: object, key: str, number: str) -> None:
    err = error_of(project, edit(with_candidate("int8.onnx")))  # type: ignore[operator]
    assert err.key == key and err.message.endswith(f": {key}: {number} is not a number the harness can use"
                                                   if "policy" not in key else
                                                   f": {key}: {number} is not a number a threshold can be compared "
                                                   "with")


def test_a_non_finite_threshold_says_it_cannot_be_compared(project: Path) -> None:
    err = error_of(project, "policy = { min_speedup = nan }\n" + with_candidate("int8.onnx"))
    assert str(err).endswith("certify.toml: policy.min_speedup: nan is not a number a threshold can be compared with")
