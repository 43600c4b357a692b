"""Small real ONNX models and datasets for the harness's own tests (built with onnx.helper, seconds)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def build_mlp(path: Path, widths: tuple[int, ...] = (16, 32, 4), seed: int = 0, batch: int | str = "batch") -> Path:
    """A float32 MLP with standard ops only: input 'x' [batch, widths[0]] -> output 'y' [batch, widths[-1]]; the
    batch dimension is dynamic unless ``batch`` is a number (a static shape, as OpenVINO's benchmark_app wants)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        current = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, widths[0]])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, widths[-1]])]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def quantize_dynamic(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def build_dataset(path: Path, model: Path, n: int = 128, features: int = 16, seed: int = 1) -> Path:
    """Inputs plus labels taken from the FP32 model's own predictions (so its accuracy is 1.0)."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


PLAN = """
name = "tiny"
[measure]
warmup_iterations = 5
min_iterations = 20
max_iterations = 400
min_duration_s = 0.2
max_duration_s = 1.0
memory_repeats = 1
bootstrap_resamples = 300
threads = 1

[[models]]
name = "tiny"
metric = "top1_accuracy"
[models.dataset]
path = "data.npz"
[models.baseline]
path = "fp32.onnx"
framework = "onnxruntime"
"""


ACCURACY_ONLY = 'policy = { required_gates = ["accuracy"] }'  # a candidate whose plan requires the accuracy gate only


def candidate(name: str, path: str, framework: str = "onnxruntime", extra: str = "") -> str:
    return f'\n[[models.candidates]]\nname = "{name}"\npath = "{path}"\nframework = "{framework}"\n{extra}\n'


def mlp_project(folder: Path, widths: tuple[int, ...]) -> Path:
    """fp32.onnx (an MLP of ``widths``) and data.npz labelled by it, in folder; returns folder."""
    build_mlp(folder / "fp32.onnx", widths)
    build_dataset(folder / "data.npz", folder / "fp32.onnx", features=widths[0])
    return folder


def tiny_project(folder: Path) -> Path:
    """fp32.onnx, int8.onnx, data.npz in folder; returns folder."""
    build_mlp(folder / "fp32.onnx")
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx")
    build_dataset(folder / "data.npz", folder / "fp32.onnx")
    return folder


def confident_dataset(path: Path, model: Path, n: int = 256, seed: int = 1, margin: float = 0.1) -> Path:
    """Inputs uniform in [-sqrt(3), sqrt(3)] labelled by the FP32 model, keeping the samples it predicts with a
    top-2 margin of at least ``margin`` x its output spread: a trained classifier's in-distribution data (a random
    MLP's near-ties flip under any rounding, FP16 included, which would measure noise, not the recipe)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    features = int(session.get_inputs()[0].shape[1])
    x = np.random.default_rng(seed).uniform(-3**0.5, 3**0.5, (8 * n, features)).astype(np.float32)
    out = np.asarray(session.run(None, {"x": x})[0])
    top = np.sort(out, axis=1)
    keep = (top[:, -1] - top[:, -2]) > margin * out.std()
    np.savez(path, x=x[keep][:n], y=out[keep][:n].argmax(1).astype(np.int64))
    return path


def with_outlier_unit(source: Path, target: Path, x: np.ndarray, scale: float = 1024.0) -> Path:
    """The same function as ``source`` with its most active first-layer unit ``scale`` x larger and that unit's
    outgoing weights ``scale`` x smaller (ReLU is positively homogeneous: FP32 outputs are unchanged). Per-tensor
    INT8 quantization of the next layer's input then crushes every other unit: the outlier-channel problem."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    inits = {i.name: i for i in model.graph.initializer}
    w0, w1 = (numpy_helper.to_array(inits[name]).copy() for name in ("w0", "w1"))
    unit = int(np.maximum(x @ w0, 0).mean(axis=0).argmax())
    w0[:, unit] *= scale
    w1[unit, :] /= scale
    for name, value in (("w0", w0), ("w1", w1)):
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(target))
    return target
