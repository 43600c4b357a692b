"""OpenVINO backend: an IR (``.xml`` + ``.bin``) or ONNX file compiled on the plan's device with its hints.

The device that really ran is the compiled model's ``EXECUTION_DEVICES`` (``AUTO`` reports e.g. ``CPU``), and the
settings in force (hint, streams, threads, inference precision) are read back from the compiled model, not
echoed from the plan: the CPU plugin may, for example, run an FP32 model in BF16 where the CPU has it.

A deployment serves a fixed shape, and OpenVINO compiles a model with dynamic dims into slower generic kernels
(measured 1.27x slower than ``benchmark_app -shape`` on a detector): given ``options.static_shapes`` (the served
shape of every input, set by the runner for ``static = true``), the model is reshaped to it before compiling.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec
from certify.backends.onnxruntime import static_shapes_option
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
READ_BACK = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
# OpenVINO element types as the harness's one precision vocabulary (the onnxruntime backend's too)
PRECISIONS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "f64": "fp64", "i8": "int8", "u8": "int8"}
# OpenVINO messages nest C++ locations ("Exception from src/...cpp:117:", "Check 'x' failed at src/...:52:")
_CPP_LOCATION = re.compile(r"(Exception from|Check '.*' failed at) \S+:\d+:")
DEVICE_DRIVERS = {
    "GPU": "install the Intel GPU compute runtime (intel-opencl-icd, which brings libOpenCL.so.1) and check "
           "/dev/dri access",
    "NPU": "install the Intel NPU driver (linux-npu-driver: level-zero + NPU compiler) and check /dev/accel access",
}
DEVICE_FAILURES = ("Cannot load library", "not registered", "cannot open shared object", "No available device")


def ov_device(ref: ModelRef) -> str:
    """The OpenVINO device name for a plan's device: OpenVINO names are upper case (``cpu`` -> ``CPU``)."""
    return ref.device.strip().upper()


def listed_devices(device: str) -> tuple[str, ...]:
    """The devices a name asks for: ``AUTO:GPU,CPU`` -> (GPU, CPU); ``AUTO`` or ``AUTO:-GPU`` -> () (any)."""
    head, _, rest = device.partition(":")
    if head.split(".")[0] not in VIRTUAL_DEVICES:
        return (device,)
    items = (d.strip() for d in rest.split(","))
    return tuple(d for d in items if d and not d.startswith("-"))


def _present(device: str, available: list[str]) -> bool:
    """``GPU`` matches ``GPU.0``/``GPU.1``; ``GPU.1`` matches only itself (or a lone, unnumbered ``GPU``)."""
    base = device.split(".")[0]
    return any(a == device or (a.split(".")[0] == base and ("." not in device or "." not in a))
               for a in available)


def first_cause(exc: BaseException) -> str:
    """The message of an OpenVINO error without its C++ locations: the innermost cause, plus the outermost
    statement when they differ (e.g. 'Model wasn't fully converted ... No conversion rule for ai.onnx.ml.Scaler')."""
    lines = [_CPP_LOCATION.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and line not in ("Summary:", "Error:")]
    if not lines:
        return type(exc).__name__
    return lines[-1] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _numpy_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except TypeError:  # e.g. 'bf16'
        return False
    return True


def ov_module() -> Any:
    """The openvino module, imported on first use (never at import time of this module)."""
    import openvino  # no py.typed (2026.4)

    return openvino


@functools.lru_cache(maxsize=1)
def ov_core() -> Any:
    """One Core per process, made when the runtime is imported: listing the devices loads their plugins then,
    before a worker takes its memory baseline, so a model's memory is the model's, not the plugin libraries'."""
    core = ov_module().Core()
    _ = core.available_devices
    return core


def _version() -> str:
    return str(ov_module().__version__).split("-")[0]


def plain_value(value: Any) -> Any:
    """A read-back property as a JSON-friendly value: enums by name, element types as 'f32'/'bf16', counts as ints."""
    if isinstance(value, str):
        return int(value) if value.isdigit() else value
    if isinstance(value, bool | int | float):
        return value
    if hasattr(value, "get_type_name"):
        return str(value.get_type_name())
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value)


def _table(value: Any) -> dict[str, Any]:
    """A plan table (frozen by the plan as a tuple of pairs, or a dict when built in code) as a dict."""
    return {str(k): v for k, v in (value.items() if isinstance(value, Mapping) else value)}


def _property_value(value: Any) -> Any:
    """Raw ``options.config`` values go to OpenVINO as strings; a nested table (DEVICE_PROPERTIES) as a dict."""
    if isinstance(value, Mapping) or (isinstance(value, tuple) and value and isinstance(value[0], tuple)):
        return {k: _property_value(v) for k, v in _table(value).items()}
    if isinstance(value, bool):
        return "YES" if value else "NO"
    return str(value)


def _dims(shape: Any) -> list[int | str]:
    """A (partial) shape as a JSON-friendly list: ints for static dims, OpenVINO's text ('?', '1..8') otherwise."""
    return [d.get_length() if d.is_static else str(d) for d in shape]


def precision_key(hint: Any) -> str | None:
    """INFERENCE_PRECISION_HINT as read back ('f32', 'bf16') in the harness's vocabulary ('fp32', 'bf16')."""
    return None if hint is None else PRECISIONS.get(str(hint), str(hint))


def port_by_name(model: Any) -> dict[str, int]:
    """Every tensor name of every input -> its port index: an input converted from ONNX or fused by a pass may
    carry several names, and the plan may use any of them."""
    return {str(name): index for index, port in enumerate(model.inputs) for name in port.get_names()}


def static_reshape(model: Any, asked: Mapping[str, list[int]]) -> dict[int, list[int]]:
    """The new shape of each input port whose declared shape is not already ``asked``; a ModelError for an
    unknown input, two names of one port asked differently, or a shape the declared static dims refuse."""
    ov, ports = ov_module(), port_by_name(model)
    wanted: dict[int, list[int]] = {}
    for name, shape in asked.items():
        if name not in ports:
            raise ModelError(f"options.static_shapes names input {name!r}, which the model does not have (its "
                             f"inputs: {sorted(ports)})", hint="name each input as the model does")
        index = ports[name]
        if wanted.setdefault(index, shape) != shape:
            raise ModelError(f"options.static_shapes gives input {name!r} {shape}, but another name of the same "
                             f"input {wanted[index]}", hint="give each input one shape")
    reshape: dict[int, list[int]] = {}
    for index, shape in wanted.items():
        declared = model.inputs[index].get_partial_shape()
        if not declared.compatible(ov.PartialShape(shape)):
            raise ModelError(f"input {model.inputs[index].get_any_name()!r} is declared {_dims(declared)}: it "
                             f"cannot be compiled at the asked static shape {shape}",
                             hint="ask a shape that keeps the model's fixed dims (and bounds) as they are")
        if _dims(declared) != shape:
            reshape[index] = shape
    return reshape


class OpenVinoBackend:
    """Runs an OpenVINO IR or an ONNX file with ``openvino.Core``: read_model, compile_model, one InferRequest per
    calling thread (a CompiledModel may be shared by threads, an InferRequest may not: it owns its tensors).

    Plan keys used: ``device`` (CPU, GPU, NPU, AUTO, ``AUTO:GPU,CPU``, ``HETERO:...``, ``MULTI:...``; upper-cased),
    ``threads`` (INFERENCE_NUM_THREADS, applied to the CPU only: scoped through DEVICE_PROPERTIES for AUTO/HETERO/
    MULTI), ``options.performance_hint`` (LATENCY by default, THROUGHPUT, CUMULATIVE_THROUGHPUT),
    ``options.num_streams`` (an int or "AUTO"), ``options.cache_dir`` (the model cache; as given, relative to the
    working directory), ``options.config`` (a table of raw OpenVINO properties, passed as strings; it wins over
    the keys above), ``options.static_shapes`` ({input name: shape}, every input: the model is reshaped to those
static shapes before compiling; any of an input's tensor names may be used). Without it shapes are kept as the
model has them; dynamic dims show as strings ('?', '1..8').
    AUTO gets ENABLE_STARTUP_FALLBACK = NO: otherwise its CPU serves the first inferences while the chosen device
    compiles (EXECUTION_DEVICES then reads '(CPU)'), and a measurement would mix two devices.
    """

    name: ClassVar[str] = "openvino"
    distributions: ClassVar[tuple[str, ...]] = ("openvino", "nncf")
    install_hint: ClassVar[str] = install_hint("openvino")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "serve concurrent clients with options.performance_hint = 'THROUGHPUT' or num_streams = clients "
                  "(each infer request then gets its own stream) and threads set to the physical cores",
        "accuracy": "quantize with accuracy control (nncf.quantize_with_accuracy_control and a max_drop), keep "
                    "sensitive layers in float with nncf.IgnoredScope (first/last layers, attention softmax), "
                    "calibrate on more representative data (300+ samples, preprocessed like inference inputs); "
                    "compare with options.config INFERENCE_PRECISION_HINT = 'f32' to rule out BF16/FP16 execution",
        "speed": "use options.performance_hint = 'LATENCY' with num_streams = 1 for batch 1 (THROUGHPUT only pays "
                 "with parallel requests), set threads to the physical cores, check EXECUTION_DEVICES in the "
                 "evidence (AUTO may have run on CPU); INT8 gains need VNNI/AMX (avx512_vnni, amx_int8) or a GPU/NPU",
        "memory": "compress weights (nncf.compress_weights INT8/INT4), save the IR with compress_to_fp16=True, "
                  "use fewer streams (each stream holds its own buffers) and options.cache_dir to skip recompiles",
        "stability": "pin num_streams and threads instead of relying on hints, set options.config "
                     "ENABLE_CPU_PINNING = 'NO' on shared hosts (or YES on a dedicated one), keep one infer "
                     "request, and remove background load",
    }
    thread_safe: ClassVar[bool] = True  # infer() uses the calling thread's own InferRequest

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.device = ov_device(ref)
        self._compiled: Any = None
        self._request: Any = None  # the loading thread's request
        self._local = threading.local()  # .request: each other calling thread's own
        self._inputs: list[TensorSpec] = []
        self._dtypes: dict[str, np.dtype[Any]] = {}  # input name -> its numpy dtype, where it has one
        self._outputs: list[str] = []
        self._config: dict[str, Any] = {}
        self._available: list[str] = []
        self._reshaped: dict[str, list[int]] = {}  # input name -> the static shape it was reshaped to

    @classmethod
    def import_runtime(cls) -> None:
        try:
            ov_core()
        except Exception as exc:
            raise BackendUnavailable(f"openvino is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        """A plain device must be listed by OpenVINO; for AUTO/HETERO/MULTI one listed device suffices."""
        device = ov_device(ref)
        try:
            core = ov_core()
            available = [str(d) for d in core.available_devices]
            seen = ", ".join(f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in available)
        except Exception as exc:  # never raise here: the answer decides a skip
            return False, f"OpenVINO {_version()} could not list devices: {first_cause(exc)}"
        listed = listed_devices(device)
        virtual = listed != (device,)
        ok = (not listed or any(_present(d, available) for d in listed)) if virtual else _present(device, available)
        detail = f"OpenVINO {_version()} devices here: {seen or 'none'}"
        missing = [d.split(".")[0] for d in listed if not _present(d, available)]
        drivers = "; ".join(DEVICE_DRIVERS[d] for d in dict.fromkeys(missing) if d in DEVICE_DRIVERS)
        if drivers and not ok:
            detail += f"; {drivers}"
        return ok, f"{device} is {'' if ok else 'not '}available; {detail}"

    def _threads(self) -> dict[str, Any]:
        """INFERENCE_NUM_THREADS is a CPU property: top-level for CPU, scoped to CPU for a virtual device."""
        if not self.ref.threads:
            return {}
        threads = {"INFERENCE_NUM_THREADS": str(self.ref.threads)}
        listed = listed_devices(self.device)
        if listed == (self.device,):
            return threads if self.device.split(".")[0] == "CPU" else {}
        if not listed or any(d.split(".")[0] == "CPU" for d in listed):
            return {"DEVICE_PROPERTIES": {"CPU": threads}}
        return {}

    def compile_config(self) -> dict[str, Any]:
        """The properties passed to compile_model, from the plan; a bad hint is a ModelError before any compile."""
        hint = str(self.ref.option("performance_hint", "LATENCY")).upper()
        if hint not in PERFORMANCE_HINTS:
            raise ModelError(f"options.performance_hint = {hint!r} is not one of {PERFORMANCE_HINTS}",
                             hint="LATENCY for batch-1 serving, THROUGHPUT for parallel requests")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, **self._threads()}
        if self.device.partition(":")[0] == "AUTO":  # measure the device AUTO settles on, not its CPU helper that
            config["ENABLE_STARTUP_FALLBACK"] = "NO"  # runs the first inferences and reports itself as '(CPU)'
        if self.ref.option("num_streams") is not None:
            config["NUM_STREAMS"] = str(self.ref.option("num_streams"))
        if self.ref.option("cache_dir"):
            config["CACHE_DIR"] = str(self.ref.option("cache_dir"))
        raw = self.ref.option("config", ())
        if not isinstance(raw, Mapping | tuple):
            raise ModelError(f"options.config must be a table of OpenVINO properties, got {raw!r}",
                             hint="write e.g. options.config = { INFERENCE_PRECISION_HINT = 'f32' }")
        for key, value in _table(raw).items():
            config[key] = _property_value(value)
        return config

    def load(self) -> None:
        self._config = self.compile_config()
        core = ov_core()
        self._available = [str(d) for d in core.available_devices]
        model = self._read(core)
        self._reshape(model)
        try:
            self._compiled = core.compile_model(model, self.device, self._config)
            self._request = self._local.request = self._compiled.create_infer_request()
        except Exception as exc:  # pybind RuntimeError with nested C++ locations: keep the cause only
            cause = first_cause(exc)
            raise ModelError(f"OpenVINO could not compile {self.ref.file.name} for device {self.device!r}: {cause}",
                             hint=self.compile_hint(cause)) from None
        # names from the model as read: a compiled port may carry fused names first ('a1' for ONNX output 'y')
        self._inputs = [self._spec(i, port) for i, port in enumerate(model.inputs)]
        self._dtypes = {spec.name: np.dtype(spec.dtype) for spec in self._inputs if _numpy_dtype(spec.dtype)}
        self._outputs = [self._port_name(i, port, "output") for i, port in enumerate(model.outputs)]

    def _read(self, core: Any) -> Any:
        path: Path = self.ref.file
        try:
            return core.read_model(str(path))
        except Exception as exc:
            cause = first_cause(exc)
            hint = "check the file is a complete OpenVINO IR or ONNX model (re-export it; compare its sha256)"
            if "conversion rule" in cause:
                hint = "OpenVINO cannot convert the ops named: re-export the model with standard ONNX ops"
            if path.suffix == ".xml":
                weights = path.with_suffix(".bin")
                hint = (f"check the .xml/.bin pair: {weights.name} must sit next to {path.name}, from the same "
                        f"export{'' if weights.is_file() else f' ({weights.name} is missing)'}")
            raise ModelError(f"OpenVINO could not read {path}: {cause}", hint=hint) from None

    def _reshape(self, model: Any) -> None:
        """Reshape ``model`` in place to ``options.static_shapes`` before it is compiled (nothing without it, or
        where an input already has that shape)."""
        asked = static_shapes_option(self.ref)
        if asked is None:
            return
        reshape = static_reshape(model, asked)
        if not reshape:
            return
        ov = ov_module()
        try:
            model.reshape({model.inputs[i]: ov.PartialShape(shape) for i, shape in reshape.items()})
        except Exception as exc:  # e.g. a Reshape with a constant target shape that the new dims contradict
            raise ModelError(f"OpenVINO could not reshape {self.ref.file.name} to {asked}: {first_cause(exc)}",
                             hint="the model hard-codes a shape somewhere: re-export it with dynamic dims or at "
                                  "the served shape") from None
        self._reshaped = {str(model.inputs[i].get_any_name()): shape for i, shape in reshape.items()}

    def compiled_shapes(self) -> dict[str, list[int | str]]:
        """Each input's shape as compiled (read back from the compiled model), by the name the model gives it."""
        return {spec.name: _dims(port.get_partial_shape())
                for spec, port in zip(self._inputs, self._compiled.inputs, strict=True)}

    def compile_hint(self, cause: str) -> str:
        """A device that failed gets its driver; any other compile failure points at the plan's properties."""
        if not any(sign in cause for sign in DEVICE_FAILURES):
            return "check options.performance_hint, num_streams and config against the device's SUPPORTED_PROPERTIES"
        listed = [d.split(".")[0] for d in listed_devices(self.device)]
        named = [d for d in listed if d in DEVICE_DRIVERS and d.lower() in cause.lower()]
        drivers = "; ".join(DEVICE_DRIVERS[d] for d in named or [d for d in listed if d in DEVICE_DRIVERS])
        virtual = listed_devices(self.device) != (self.device,)
        return ((drivers or "install the device's OpenVINO plugin and driver")
                + (" (AUTO/HETERO/MULTI load the plugin of every listed device: drop a missing one from the list)"
                   if virtual else "")
                + ", or target CPU (openvino.Core().available_devices lists what OpenVINO finds)")

    @staticmethod
    def _port_name(index: int, port: Any, what: str) -> str:
        if not port.get_names():
            raise ModelError(f"the model's {what} #{index} has no tensor name",
                             hint="name every input and output when exporting the model")
        return str(port.get_any_name())

    def _spec(self, index: int, port: Any) -> TensorSpec:
        shape = tuple(_dims(port.get_partial_shape()))
        element = port.get_element_type()
        try:
            dtype = str(np.dtype(element.to_dtype()))
        except Exception:  # e.g. bf16 has no numpy dtype
            dtype = str(element.get_type_name())
        return TensorSpec(self._port_name(index, port, "input"), shape, dtype)

    def input_specs(self) -> list[TensorSpec]:
        return self._inputs

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Runs the calling thread's own InferRequest (requests must not be shared between threads).

        The worker hands the same prepared arrays to every timed call, so they are bound to the request once, as
        zero-copy tensors, and bound again only when other arrays come; the timed call is then a bare ``infer()``,
        as in benchmark_app. (``request.infer(feeds)`` re-runs OpenVINO's Python input dispatch on every call:
        50-125 us after a multi-millisecond inference has evicted it from the caches, measured in
        benchmarks/test_native_openvino.py.) Outputs are copies, so the next inference cannot overwrite them."""
        local = self._local
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = self._compiled.create_infer_request()
        arrays, bound = tuple(feeds.values()), getattr(local, "bound", ())
        if len(arrays) != len(bound) or any(a is not b for a, b in zip(arrays, bound, strict=True)):
            local.bound = ()  # a failed bind must not leave a half-bound request looking current
            local.tensors = [self._bind(request, name, array) for name, array in feeds.items()]
            local.bound = arrays  # holds the arrays: shared tensors must not outlive the memory they point into
        return list(request.infer().to_tuple())

    def _bind(self, request: Any, name: str, array: np.ndarray) -> np.ndarray:
        """Binds ``array`` to input ``name`` without a copy when it is contiguous, writeable and of the input's
        dtype (prepared feeds are); otherwise binds a converted copy, as ``request.infer(feeds)`` would."""
        dtype = self._dtypes.get(name)
        data = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
        if not (data.flags.c_contiguous and data.flags.writeable):
            data = np.array(data, order="C")
        request.set_tensor(name, ov_module().Tensor(data, shared_memory=True))
        return data

    def executed_device(self) -> str:
        return ",".join(str(d) for d in self._compiled.get_property("EXECUTION_DEVICES"))

    def in_force(self) -> dict[str, dict[str, Any]]:
        """Settings read back from the compiled model, per device that executes (virtual devices report theirs
        through DEVICE_PROPERTIES)."""
        supported = self._compiled.get_property("SUPPORTED_PROPERTIES")
        if "DEVICE_PROPERTIES" in supported:
            per_device = self._compiled.get_property("DEVICE_PROPERTIES")
            return {str(dev): {k: plain_value(v) for k, v in props.items() if k in READ_BACK}
                    for dev, props in per_device.items()}
        return {self.executed_device(): {k: plain_value(self._compiled.get_property(k)) for k in READ_BACK
                                         if k in supported}}

    def info(self) -> dict[str, Any]:
        ov = ov_module()
        in_force, executed = self.in_force(), self.executed_device().split(",")
        first = in_force.get(executed[0]) or next(iter(in_force.values()), {})  # the device that ran first
        return {
            "framework": "openvino",
            "version": str(ov.__version__),
            "device_requested": self.device,
            "execution_devices": executed,
            "performance_hint": first.get("PERFORMANCE_HINT"),
            "num_streams": first.get("NUM_STREAMS"),
            "inference_num_threads": first.get("INFERENCE_NUM_THREADS"),
            "inference_precision": first.get("INFERENCE_PRECISION_HINT"),
            "precision": precision_key(first.get("INFERENCE_PRECISION_HINT")),
            "in_force": in_force,
            "config_requested": self._config,
            "available_devices": self._available,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self._inputs],
            "outputs": self._outputs,
            "static_shapes": static_shapes_option(self.ref),
            "reshaped": self._reshaped,
            "compiled_shapes": self.compiled_shapes(),
        }

    def close(self) -> None:
        self._request, self._local = None, threading.local()
        self._compiled = None
