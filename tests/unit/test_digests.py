"""Model digests: one file by its bytes, multi-file models by a manifest of their files."""

from __future__ import annotations

import hashlib
from pathlib import Path

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


def _external_data_model(folder: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
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
