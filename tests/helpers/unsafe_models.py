"""Model files that break the security gate's rules on purpose (and their clean twins), plus a backend that leaks
an environment secret into its ``info()``, named in test plans as
``framework = "tests.helpers.unsafe_models:LeaksSecretInInfo"``."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.onnxruntime import OnnxRuntimeBackend
from tests.helpers.models import build_mlp

LEAKED_VARIABLE = "MY_API_TOKEN"


class LeaksSecretInInfo(OnnxRuntimeBackend):
    """ONNX Runtime, but its info() copies $MY_API_TOKEN into the evidence, as a careless debug dump would."""

    name: ClassVar[str] = "leaks-secret"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "debug_environment": {LEAKED_VARIABLE: os.environ.get(LEAKED_VARIABLE, "")}}


def custom_domain_onnx(path: Path, domain: str = "com.evil", op: str = "EvilOp") -> Path:
    """A model with one node from ``domain``: it needs a custom-op library to run (it is never run here)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], domain=domain)]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    onnx.save(model, str(path))
    return path


def with_external_data(source: Path, path: Path, location: str = "weights.bin") -> Path:
    """``source`` saved as ``path`` with every initializer in the external file ``location`` (relative to it)."""
    import onnx

    model = onnx.load(str(source))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def escaping_external_data(folder: Path, location: str = "../outside.bin") -> Path:
    """``folder/model.onnx`` whose first initializer's bytes are read from ``location``, outside its folder (the
    file exists there, so only the location is wrong)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(build_mlp(folder / "inline.onnx")))
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data or np.asarray(tensor.float_data, np.float32).tobytes()
    (folder / location).resolve().write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (folder / "inline.onnx").unlink()
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def openvino_ir(onnx_model: Path, xml: Path) -> Path:
    """``onnx_model`` converted to an OpenVINO IR (``xml`` and its ``.bin``)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_model)), str(xml))
    return xml


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its size, in place."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def ir_with_extension(xml: Path, opset: str = "custom_opset") -> Path:
    """The IR's ReLU layer declared as coming from an extension opset (in place)."""
    text = xml.read_text()
    xml.write_text(text.replace('type="ReLU" version="opset1"', f'type="ReLU" version="{opset}"', 1))
    return xml


def ir_with_doctype(xml: Path) -> Path:
    """The IR with an (entity-defining) DTD in front of its root element, the shape of an XML bomb (in place)."""
    text = xml.read_text()
    xml.write_text(text.replace("<net ", '<!DOCTYPE net [<!ENTITY lol "lol">]>\n<net ', 1))
    return xml


def gguf_with_chat_template(path: Path, template: str, architecture: str = "llama") -> Path:
    """A small well-formed GGUF carrying ``template`` as ``tokenizer.chat_template``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_chat_template(template)
    writer.add_tensor("blk.0.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_declaring(path: Path, *, array_items: int = 0, string_bytes: int = 0) -> Path:
    """A GGUF header written by hand that declares an array of ``array_items`` uint8 items or a string of
    ``string_bytes`` bytes, without the bytes to back them: a bounded reader refuses it before reading them."""
    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kv = text("general.architecture") + struct.pack("<I", 8) + text("llama")
    if array_items:
        kv += text("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 0, array_items)
    if string_bytes:
        kv += text("general.description") + struct.pack("<IQ", 8, string_bytes)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2 if (array_items or string_bytes) else 1) + kv)
    return path


def mlx_style_folder(folder: Path, *, with_pickle: bool) -> Path:
    """An MLX model folder (``model.json`` naming a factory, weights in safetensors), optionally with a pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"factory": "tests.helpers.mlx_models:mlp", "kwargs": {}}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    if with_pickle:
        (folder / "optimizer_state.pkl").write_bytes(pickle.dumps({"step": 1, "lr": 0.01}))
    return folder
