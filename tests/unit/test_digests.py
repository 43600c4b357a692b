"""Model digests: one file by its bytes, multi-file models by a manifest of their files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.digests import model_digest
from certify.errors import CertifyError


def test_a_single_file_is_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not really onnx")  # unreadable as ONNX: digested as bytes, the gates judge it
    digest = model_digest(path)
    assert digest.sha256 == hashlib.sha256(b"not really onnx").hexdigest()
    assert digest.files == (("m.onnx", digest.sha256),)


def test_an_openvino_ir_covers_xml_and_bin(tmp_path: Path) -> None:
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\x00" * 16)
    first = model_digest(tmp_path / "m.xml")
    assert [p for p, _ in first.files] == ["m.bin", "m.xml"]
    (tmp_path / "m.bin").write_bytes(b"\x01" * 16)  # weights change, the .xml does not
    assert model_digest(tmp_path / "m.xml").sha256 != first.sha256


def test_a_folder_covers_every_file_and_their_names(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.safetensors").write_bytes(b"w")
    first = model_digest(folder)
    assert [p for p, _ in first.files] == ["config.json", "sub/weights.safetensors"]
    (folder / "sub" / "weights.safetensors").rename(folder / "weights.safetensors")
    assert model_digest(folder).sha256 != first.sha256  # same bytes, different layout


def _external(name: str, array: np.ndarray, location: str) -> Any:
    """A tensor whose data lives in ``location`` (not written here)."""
    from onnx import TensorProto, numpy_helper

    tensor = numpy_helper.from_array(array, name)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _external_data_model(folder: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weight = _external("w", np.ones((4, 4), np.float32), location)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_external_data_is_part_of_the_model(tmp_path: Path) -> None:
    path = _external_data_model(tmp_path, "m.weights")
    (tmp_path / "m.weights").write_bytes(np.ones((4, 4), np.float32).tobytes())
    first = model_digest(path)
    assert [p for p, _ in first.files] == ["m.onnx", "m.weights"]
    (tmp_path / "m.weights").write_bytes(np.zeros((4, 4), np.float32).tobytes())
    assert model_digest(path).sha256 != first.sha256


def test_external_data_of_sparse_initializers_and_function_bodies_is_part_of_the_model(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    values, indices = np.ones(2, np.float32), np.array([0, 5], np.int64)
    sparse = helper.make_sparse_tensor(_external("s", values, "sparse.values"),
                                       _external("s_idx", indices, "sparse.indices"), [2, 4])
    constant = helper.make_node("Constant", [], ["c"], value=_external("c", np.ones(4, np.float32), "function.bin"))
    body = helper.make_function("local", "AddConstant", ["a"], ["b"],
                                [constant, helper.make_node("Add", ["a", "c"], ["b"])], [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("AddConstant", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], sparse_initializer=[sparse])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, functions=[body], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]), str(path))
    data = {"sparse.values": values, "sparse.indices": indices, "function.bin": np.ones(4, np.float32)}
    for name, array in data.items():
        (tmp_path / name).write_bytes(array.tobytes())
    first = model_digest(path)
    assert [p for p, _ in first.files] == ["function.bin", "m.onnx", "sparse.indices", "sparse.values"]
    (tmp_path / "function.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    assert model_digest(path).sha256 != first.sha256


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _external_data_model(inner, "../secrets.bin")
    (tmp_path / "secrets.bin").write_bytes(b"x" * 64)
    with pytest.raises(CertifyError, match="outside the model's folder"):
        model_digest(path)


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CertifyError, match="does not exist"):
        model_digest(tmp_path / "nope.onnx")
