"""Static shapes (``options.static_shapes``): OpenVINO reshapes the model and ONNX Runtime overrides its free
dims to the served shape before compiling; both then report fixed input specs, the shapes compiled and the
precision in force, run at that shape, and refuse shapes the model's declared dims contradict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.models import quantize_dynamic

ov = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from certify.backends.onnxruntime import (  # noqa: E402 - after the importorskip
    OnnxRuntimeBackend,
    free_dimensions,
    model_precision,
    static_shapes_option,
)
from certify.backends.openvino import OpenVinoBackend  # noqa: E402

SERVED = {"x": [1, 3, 16, 24], "scale": [1, 8]}
F32 = (("INFERENCE_PRECISION_HINT", "f32"),)  # the CPU may run FP32 in BF16: compare numbers in FP32


def build_convnet(path: Path, width: str | None = "w") -> Path:
    """x [batch, 3, h, W] -> Conv 3x3 (8 channels) -> Relu -> mean over H, W -> times scale [batch, 8]. ``width``:
    the W dim's name, or None for a dynamic dim without a name (ORT cannot override that one)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Mul", ["m", "scale"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", width]),
              helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])]
    graph = helper.make_graph(nodes, "convnet", inputs, outputs, [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ONNX convnet (named and unnamed W), its IR whose input x also answers to the name 'x_pixels', and an
    INT8 (dynamic quantization) version."""
    folder = tmp_path_factory.mktemp("static")
    onnx_path = build_convnet(folder / "convnet.onnx")
    ir = ov.convert_model(str(onnx_path))
    ir.inputs[0].get_tensor().add_names({"x_pixels"})
    ov.save_model(ir, str(folder / "convnet.xml"), compress_to_fp16=False)
    return {"onnx": onnx_path, "ir": folder / "convnet.xml",
            "unnamed": build_convnet(folder / "unnamed.onnx", width=None),
            "int8": quantize_dynamic(onnx_path, folder / "int8.onnx")}


def feeds(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def reference(model: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The dynamic model's output from a plain onnxruntime session."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, inputs)[0])


def ref(path: Path, framework: str, shapes: dict[str, list[int]] | None = None, **options: Any) -> ModelRef:
    extra = (("static_shapes", shapes),) if shapes is not None else ()
    return ModelRef(name="m", path=path, framework=framework, threads=1,
                    options=tuple(sorted(options.items())) + extra)


def loaded(model: ModelRef) -> Any:
    backend = OpenVinoBackend(model) if model.framework == "openvino" else OnnxRuntimeBackend(model)
    backend.load()
    return backend


# ------------------------------------------------------------------------------------------------ OpenVINO

@pytest.mark.parametrize("kind", ["ir", "onnx"])
def test_openvino_compiles_the_static_shape(models: dict[str, Path], kind: str) -> None:
    backend = loaded(ref(models[kind], "openvino", SERVED, config=F32))
    specs = {s.name: s.shape for s in backend.input_specs()}
    assert specs == {"x": (1, 3, 16, 24), "scale": (1, 8)}
    info = backend.info()
    assert info["compiled_shapes"] == SERVED
    assert info["reshaped"] == SERVED and info["static_shapes"] == SERVED
    assert info["precision"] == "fp32" and info["inference_precision"] == "f32"
    inputs = feeds(SERVED)
    np.testing.assert_allclose(backend.infer(inputs)[0], reference(models["onnx"], inputs), atol=1e-5)
    backend.close()


def test_openvino_without_static_shapes_keeps_the_dynamic_dims(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["ir"], "openvino"))
    assert {s.name: s.shape for s in backend.input_specs()} == {"x": ("?", 3, "?", "?"), "scale": ("?", 8)}
    info = backend.info()
    assert info["compiled_shapes"] == {"x": ["?", 3, "?", "?"], "scale": ["?", 8]}
    assert info["reshaped"] == {} and info["static_shapes"] is None
    assert info["precision"] in ("fp32", "bf16", "fp16")  # the device's default: BF16 where the CPU has it
    backend.close()


def test_openvino_takes_any_name_of_an_input(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["ir"], "openvino", {"x_pixels": [1, 3, 16, 24], "scale": [1, 8]}))
    assert backend.info()["compiled_shapes"] == SERVED  # recorded by the model's own name of the input
    backend.close()
    with pytest.raises(ModelError, match=r"gives input 'x' \[2, 3, 16, 24\], but another name of the same input "
                                         r"\[1, 3, 16, 24\]"):
        loaded(ref(models["ir"], "openvino", {"x_pixels": [1, 3, 16, 24], "x": [2, 3, 16, 24], "scale": [1, 8]}))


def test_openvino_already_static_is_not_reshaped(models: dict[str, Path], tmp_path: Path) -> None:
    model = ov.Core().read_model(str(models["ir"]))
    model.reshape({"x": SERVED["x"], "scale": SERVED["scale"]})
    ov.save_model(model, str(tmp_path / "static.xml"))
    backend = loaded(ref(tmp_path / "static.xml", "openvino", SERVED))
    assert backend.info()["reshaped"] == {} and backend.info()["compiled_shapes"] == SERVED
    backend.close()


@pytest.mark.parametrize(("asked", "message"), [
    ({"x": [1, 4, 16, 24], "scale": [1, 8]},
     "input 'x' is declared ['?', 3, '?', '?']: it cannot be compiled at the asked static shape [1, 4, 16, 24]"),
    ({"x": [1, 3, 16], "scale": [1, 8]},
     "input 'x' is declared ['?', 3, '?', '?']: it cannot be compiled at the asked static shape [1, 3, 16]"),
    ({"x": [1, 3, 16, 24], "bias": [1, 8]}, "names input 'bias', which the model does not have"),
    ({"x": [3, 3, 16, 24], "scale": [2, 8]}, "OpenVINO could not reshape convnet.xml to "),  # Mul: 3 vs 2
    ({"x": [1, 3, 16, 0], "scale": [1, 8]}, "not a list of positive integers"),
])
def test_openvino_refuses_a_conflicting_shape(models: dict[str, Path], asked: dict[str, list[int]],
                                              message: str) -> None:
    with pytest.raises(ModelError) as refused:
        loaded(ref(models["ir"], "openvino", asked))
    assert message in refused.value.message and "\n" not in refused.value.message


# ------------------------------------------------------------------------------------------------ ONNX Runtime

def test_onnxruntime_overrides_the_free_dims(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["onnx"], "onnxruntime", SERVED))
    assert {s.name: s.shape for s in backend.input_specs()} == {"x": (1, 3, 16, 24), "scale": (1, 8)}
    info = backend.info()
    assert info["free_dimension_overrides"] == {"batch": 1, "h": 16, "w": 24}
    assert info["compiled_shapes"] == SERVED and info["not_overridden"] == []
    assert info["precision"] == "fp32"
    inputs = feeds(SERVED)
    np.testing.assert_allclose(backend.infer(inputs)[0], reference(models["onnx"], inputs), atol=1e-5)
    with pytest.raises(Exception, match="invalid dimensions"):  # the session is fixed at the served shape
        backend.infer(feeds({"x": [2, 3, 16, 24], "scale": [2, 8]}))
    backend.close()


def test_onnxruntime_without_static_shapes_keeps_the_symbolic_dims(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["onnx"], "onnxruntime"))
    assert {s.name: s.shape for s in backend.input_specs()} == {"x": ("batch", 3, "h", "w"), "scale": ("batch", 8)}
    info = backend.info()
    assert info["free_dimension_overrides"] == {} and info["static_shapes"] is None
    assert info["compiled_shapes"] == {"x": ["batch", 3, "h", "w"], "scale": ["batch", 8]}
    backend.close()


def test_onnxruntime_records_a_dim_without_a_name(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["unnamed"], "onnxruntime", SERVED))
    info = backend.info()
    assert info["not_overridden"] == ["x[3]"] and "cannot be fixed" in info["not_overridden_why"]
    assert info["compiled_shapes"]["x"] == [1, 3, 16, None]  # stays dynamic: the record says so
    assert backend.infer(feeds(SERVED))[0].shape == (1, 8)
    backend.close()


@pytest.mark.parametrize(("asked", "message"), [
    ({"x": [1, 3, 16, 24], "scale": [2, 8]},
     "gives the model's dim 'batch' two values: 1 (x[0]) and 2 (scale[0])"),
    ({"x": [1, 4, 16, 24], "scale": [1, 8]},
     "input 'x' is declared ['batch', 3, 'h', 'w']: it cannot run at the asked static shape [1, 4, 16, 24]"),
    ({"x": [1, 3, 16, 24], "bias": [1, 8]}, "names input(s) ['bias'] the model does not have"),
])
def test_onnxruntime_refuses_a_conflicting_shape(models: dict[str, Path], asked: dict[str, list[int]],
                                                 message: str) -> None:
    with pytest.raises(ModelError) as refused:
        loaded(ref(models["onnx"], "onnxruntime", asked))
    assert message in refused.value.message and "\n" not in refused.value.message


def test_onnxruntime_precision_of_a_quantized_model(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["int8"], "onnxruntime", SERVED))
    assert backend.info()["precision"] == "int8"
    backend.close()


@pytest.mark.parametrize(("weights", "op", "precision"), [
    (np.float32, "Add", "fp32"), (np.float16, "Add", "fp16"), (np.float32, "QLinearAdd", "int8"),
    (np.float32, "DequantizeLinear", "int8"), (np.float32, "MatMulNBits", "int4")])
def test_onnxruntime_precision_from_weights_and_operators(weights: Any, op: str, precision: str) -> None:
    """The precision key from the graph alone: quantized operators first, else the float type of most weights
    (a float16 model with a float32 constant or two is still fp16)."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((64, 64), weights), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "k")]
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g", [], [], inits)
    assert model_precision(helper.make_model(graph)) == precision


def test_static_shapes_option_accepts_a_frozen_table() -> None:
    frozen = ModelRef(name="m", path=None, framework="onnxruntime",
                      options=(("static_shapes", (("x", (1, 3)), ("y", [2]))),))
    assert static_shapes_option(frozen) == {"x": [1, 3], "y": [2]}
    assert free_dimensions([("x", ("n", 3)), ("y", ("n",))], {"x": [2, 3], "y": [2]}) == ({"n": 2}, [])


# ------------------------------------------------------------------------------------------------ through a worker

@pytest.mark.parametrize("kind", ["ir", "onnx"])
def test_static_shapes_through_the_worker(models: dict[str, Path], kind: str) -> None:
    """The real path: the worker's prepare/load, then feeds checked against the fixed specs."""
    framework = "openvino" if kind == "ir" else "onnxruntime"
    model = ref(models[kind], framework, SERVED)
    with WorkerClient("candidate", model, 60) as worker:
        answer = worker.call("load", ref=model)
        shapes = worker.call("feeds", key="k", arrays=feeds(SERVED))
        with pytest.raises(ModelError, match=r"input 'x'.*1, 3, 16, 24"):
            worker.call("feeds", key="k2", arrays=feeds({"x": [2, 3, 16, 24], "scale": [2, 8]}))
    assert answer["info"]["compiled_shapes"] == SERVED == shapes
    assert {i["name"]: list(i["shape"]) for i in answer["inputs"]} == SERVED
