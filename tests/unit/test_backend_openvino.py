"""The OpenVINO backend, for real: IR (FP32 and FP16) and ONNX against onnxruntime, directly and through the
isolated worker; the device that really ran; settings read back; missing devices and broken files as clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import Backend
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.models import build_mlp

ov = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

from certify.backends.openvino import (  # noqa: E402 - after the importorskip
    OpenVinoBackend,
    _present,
    first_cause,
    listed_devices,
)

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU may otherwise run FP32 models in BF16 (it does on this host)
CPP_LOCATION = re.compile(r"\.(cpp|hpp):\d+")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ONNX MLP and its IR conversions: FP32 weights and FP16-compressed weights."""
    folder = tmp_path_factory.mktemp("openvino")
    onnx_path = build_mlp(folder / "mlp.onnx")
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "fp32.xml"), compress_to_fp16=False)
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "fp16.xml"), compress_to_fp16=True)
    return {"onnx": onnx_path, "fp32": folder / "fp32.xml", "fp16": folder / "fp16.xml"}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)


def reference(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, feeds)
    return outputs


def ref(path: Path, device: str = "CPU", threads: int = 1, **options: Any) -> ModelRef:
    return ModelRef(name="m", path=path, framework="openvino", device=device, threads=threads,
                    options=tuple(sorted(options.items())))


def loaded(model: ModelRef) -> OpenVinoBackend:
    backend = OpenVinoBackend(model)
    backend.load()
    return backend


def has_device(kind: str) -> bool:
    return any(d.split(".")[0] == kind for d in ov.Core().available_devices)


@pytest.mark.parametrize(("kind", "config", "atol"), [
    ("onnx", F32, 1e-5),   # FP32 executed in FP32: the same numbers as onnxruntime
    ("fp32", F32, 1e-5),
    ("fp16", F32, 5e-3),   # FP16 weights, FP32 execution (measured max |diff| 5e-4)
    ("fp32", {}, 5e-2),    # the device's default precision (BF16 here: measured max |diff| 8e-3)
    ("fp16", {}, 5e-2),
])
def test_ir_and_onnx_give_onnxruntime_outputs(models: dict[str, Path], x: np.ndarray, kind: str,
                                              config: dict[str, str], atol: float) -> None:
    backend = loaded(ref(models[kind], config=config))
    [spec] = backend.input_specs()
    assert (spec.name, spec.shape, spec.dtype) == ("x", ("?", 16), "float32")  # dynamic batch kept, as a string
    [out] = backend.infer({"x": x})
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(models["onnx"], {"x": x})[0], atol=atol, rtol=0)
    assert backend.info()["outputs"] == ["y"]  # the model's own name, not a fused one
    backend.close()


def test_outputs_are_fresh_arrays_the_next_inference_does_not_overwrite(models: dict[str, Path],
                                                                         x: np.ndarray) -> None:
    backend = loaded(ref(models["fp32"], config=F32))
    first = backend.infer({"x": x})[0]
    kept = first.copy()
    second = backend.infer({"x": -x})[0]
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    assert backend.infer({"x": x[:2]})[0].shape == (2, 4)  # another batch size on the same request


def test_outputs_come_back_in_the_models_output_order(tmp_path: Path, x: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Neg", ["x"], ["second_by_name"]), helper.make_node("Relu", ["x"], ["a_first"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 16])
                               for n in ("second_by_name", "a_first")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "two.onnx"))
    backend = loaded(ref(tmp_path / "two.onnx", config=F32))
    outs = backend.infer({"x": x})
    for got, want in zip(outs, reference(tmp_path / "two.onnx", {"x": x}), strict=True):
        np.testing.assert_array_equal(got, want)
    assert backend.info()["outputs"] == ["second_by_name", "a_first"]


def test_worker_runs_an_fp16_ir_and_records_where_and_how(models: dict[str, Path], x: np.ndarray) -> None:
    model = ref(models["fp16"], config=F32)
    with WorkerClient("candidate", model, 60) as worker:
        answer = worker.call("load", ref=model)
        worker.call("feeds", key="k", arrays={"": x.astype(np.float64)})  # float64 is cast, documented
        times = worker.call("run", key="k", iterations=20)
        out = worker.call("predict", key="k", batch_size=2)["scored"]  # batches 2, 2, 1: the dynamic batch at work
        mem = worker.call("memory")
    info = answer["info"]
    assert answer["executed_device"] == "CPU" and info["execution_devices"] == ["CPU"]
    assert info["version"] == ov.__version__ and info["inference_num_threads"] == 1
    assert info["inference_precision"] == "f32" and info["performance_hint"] == "LATENCY"
    assert answer["inputs"] == [{"name": "x", "shape": ("?", 16), "dtype": "float32"}]
    assert times.shape == (20,) and (times > 0).all()
    np.testing.assert_allclose(out, reference(models["onnx"], {"x": x})[0], atol=5e-3, rtol=0)
    assert mem["peak"] >= mem["rss_before"] > 0


@pytest.mark.parametrize("device", ["AUTO", "AUTO:NPU,CPU", "cpu"])
def test_auto_and_lower_case_devices_execute_on_the_cpu(models: dict[str, Path], device: str) -> None:
    if device.startswith("AUTO") and (has_device("GPU") or has_device("NPU")):
        pytest.skip("AUTO would pick this host's accelerator")
    backend = loaded(ref(models["fp32"], device=device, threads=1))
    info = backend.info()
    # never '(CPU)', AUTO's startup helper, which AUTO:NPU,CPU reported in 2 of 6 fresh processes without
    # ENABLE_STARTUP_FALLBACK = NO
    assert backend.executed_device() == "CPU"
    assert info["device_requested"] == device.upper()
    assert info["in_force"]["CPU"]["INFERENCE_NUM_THREADS"] == 1  # AUTO: threads scoped to its CPU, read back
    assert ("ENABLE_STARTUP_FALLBACK" in info["config_requested"]) == device.startswith("AUTO")


def test_throughput_hint_and_streams_are_in_force(models: dict[str, Path]) -> None:
    backend = loaded(ref(models["fp32"], threads=2, performance_hint="throughput", num_streams=2))
    info = backend.info()
    assert info["performance_hint"] == "THROUGHPUT"
    assert info["config_requested"]["NUM_STREAMS"] == "2"
    assert info["num_streams"] == 2 and info["inference_num_threads"] == 2  # read back from the compiled model
    default = loaded(ref(models["fp32"])).info()
    assert (default["performance_hint"], default["num_streams"]) == ("LATENCY", 1)


def test_gpu_is_not_available_and_says_what_openvino_sees(models: dict[str, Path]) -> None:
    if has_device("GPU"):
        pytest.skip("this host has an OpenVINO GPU")
    ok, detail = OpenVinoBackend.available_devices(ref(models["fp16"], device="GPU"))
    seen = ", ".join(ov.Core().available_devices)
    assert not ok and detail.startswith("GPU is not available; OpenVINO ")
    assert "devices here: " in detail and all(d in detail for d in seen.split(", "))
    assert "intel-opencl-icd" in detail  # what to install
    assert OpenVinoBackend.available_devices(ref(models["fp16"], device="AUTO:GPU"))[0] is False
    assert OpenVinoBackend.available_devices(ref(models["fp16"], device="AUTO:GPU,CPU"))[0] is True
    assert OpenVinoBackend.available_devices(ref(models["fp16"], device="AUTO"))[0] is True
    assert OpenVinoBackend.available_devices(ref(models["fp16"], device="cpu"))[0] is True


def openvino_error(model: Path, device: str) -> RuntimeError:
    core = ov.Core()
    try:
        core.compile_model(core.read_model(str(model)), device)
    except RuntimeError as exc:
        return exc
    raise AssertionError(f"{device} compiled here")


def test_forcing_a_missing_gpu_is_a_model_error_with_the_cause(models: dict[str, Path]) -> None:
    if has_device("GPU"):
        pytest.skip("this host has an OpenVINO GPU")
    raw = str(openvino_error(models["fp16"], "GPU"))
    cause = [line for line in raw.splitlines() if line.strip() and not line.startswith("Exception from")][-1]
    model = ref(models["fp16"], device="GPU")
    with pytest.raises(ModelError) as direct:
        loaded(model)
    with WorkerClient("candidate", model, 60) as worker, pytest.raises(ModelError) as remote:
        worker.call("load", ref=model)
    for error in (direct.value, remote.value):
        assert error.message.startswith("OpenVINO could not compile fp16.xml for device 'GPU': ")
        assert cause.strip() in error.message
        assert "Traceback" not in error.message and "Exception from" not in error.message
        assert not CPP_LOCATION.search(error.message)
        assert "Intel GPU" in error.hint and "target CPU" in error.hint


def test_corrupt_xml_and_missing_bin_name_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.xml"
    corrupt.write_bytes(models["fp32"].read_bytes()[:400])
    (tmp_path / "corrupt.bin").write_bytes(models["fp32"].with_suffix(".bin").read_bytes())
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(models["fp32"].read_bytes())
    for path in (corrupt, lonely):
        with pytest.raises(ModelError) as info:
            loaded(ref(path))
        assert info.value.message.startswith(f"OpenVINO could not read {path}: ")
        assert "Exception from" not in info.value.message and not CPP_LOCATION.search(info.value.message)
        assert ".xml/.bin pair" in info.value.hint
    assert "(lonely.bin is missing)" in info.value.hint and "bin file" in info.value.message


def test_bad_options_are_clear_errors(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="performance_hint = 'FAST' is not one of"):
        loaded(ref(models["fp32"], performance_hint="fast"))
    with pytest.raises(ModelError, match="Unsupported property NOT_A_PROPERTY") as info:
        loaded(ref(models["fp32"], config={"NOT_A_PROPERTY": "1"}))
    assert "SUPPORTED_PROPERTIES" in info.value.hint
    with pytest.raises(ModelError, match=r"options\.config must be a table"):
        loaded(ref(models["fp32"], config="f32"))


def test_device_names_and_causes() -> None:
    assert listed_devices("AUTO:GPU, CPU") == ("GPU", "CPU")
    assert listed_devices("AUTO") == () and listed_devices("AUTO:-GPU") == ()
    assert listed_devices("GPU.1") == ("GPU.1",)
    assert _present("GPU", ["CPU", "GPU.0", "GPU.1"]) and _present("GPU.1", ["GPU.0", "GPU.1"])
    assert not _present("GPU.1", ["CPU", "GPU.0"]) and not _present("NPU", ["CPU"])
    nested = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                          "Check 'x' failed at src/frontends/common/src/frontend.cpp:117:\n"
                          "FrontEnd API failed with OpConversionFailure:\nSummary:\n"
                          "-- No conversion rule found for operations: ai.onnx.ml.Scaler\n\n")
    assert first_cause(nested) == ("FrontEnd API failed with OpConversionFailure: ... "
                                   "-- No conversion rule found for operations: ai.onnx.ml.Scaler")
    assert first_cause(RuntimeError("")) == "RuntimeError"


def test_registered_lazily_and_shaped_like_a_backend() -> None:
    cls = resolve_backend("openvino")
    assert cls is OpenVinoBackend and cls.distributions == ("openvino", "nncf")
    assert isinstance(OpenVinoBackend(ref(Path("m.xml"))), Backend)
    assert set(cls.hints) == {"accuracy", "speed", "memory", "stability", "stress"}
    assert "quantize_with_accuracy_control" in cls.hints["accuracy"]
    code = "import sys, certify.backends.openvino; assert 'openvino' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
