"""ONNX Runtime backend: execution providers, session options, threads, and the provider that really ran.

Given ``options.static_shapes`` (the served shape of every input, set by the runner for ``static = true``), the
model's symbolic dims are fixed through ORT's free-dimension overrides, so the session plans for the served shape
as a deployment would. The model file is parsed once (``onnx_summary``) for its inputs' dim names and for the
precision its weights and operators run in; the parse is done by ``prepare``, before the worker notes the memory
baseline, so the protobuf is not counted as the model's memory.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

DEFAULT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "npu": ["QNNExecutionProvider", "CPUExecutionProvider"],
}
PROVIDER_DEVICE = {
    "CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "gpu", "TensorrtExecutionProvider": "gpu",
    "ROCMExecutionProvider": "gpu", "MIGraphXExecutionProvider": "gpu", "DmlExecutionProvider": "gpu",
    "CoreMLExecutionProvider": "npu", "QNNExecutionProvider": "npu", "VitisAIExecutionProvider": "npu",
    "OpenVINOExecutionProvider": "cpu", "AzureExecutionProvider": "cpu",
}
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}
GRAPH_LEVELS = ("disable", "basic", "extended", "all")
# operators that run integer arithmetic (QOperator format), or mark a QDQ model (Quantize/DequantizeLinear pairs)
INT8_OPS = frozenset({"MatMulInteger", "ConvInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
                      "DynamicQuantizeLinear", "MatMulIntegerToFloat", "QuantizeLinear", "DequantizeLinear"})
INT4_OPS = frozenset({"MatMulNBits"})  # weight-only 4-bit (onnxruntime's MatMul4BitsQuantizer, GPTQ/RTN exports)
Dim = int | str | None  # a fixed dim, a symbolic one (its dim_param), or one without a name


def static_shapes_option(ref: ModelRef) -> dict[str, list[int]] | None:
    """``options.static_shapes`` ({input name: shape}, what the runner passes for ``static = true``) checked: each
    shape a list of positive ints. None when not asked. Shared by the backends that can compile a fixed shape."""
    raw = ref.option("static_shapes")
    if not raw:
        return None
    items = raw.items() if isinstance(raw, Mapping) else raw
    shapes = {}
    for name, shape in items:
        dims = list(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else None
        if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise ModelError(f"options.static_shapes: input {name!r} has shape {shape!r}, not a list of positive "
                             "integers", hint="give every input its served shape, e.g. { x = [1, 3, 640, 640] }")
        shapes[str(name)] = dims
    return shapes


@dataclass(frozen=True)
class OnnxSummary:
    """What the backend needs from the model file: its inputs' dims (graph inputs that are not initializers) and
    the precision it computes in."""

    inputs: tuple[tuple[str, tuple[Dim, ...]], ...]
    precision: str


def onnx_summary(path: Path) -> OnnxSummary | None:
    """The model's summary, parsed once per file version (None without the onnx package or for a file onnx cannot
    read: the session's own load then reports it)."""
    st = path.stat()
    return _cached_summary(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=8)
def _cached_summary(path: str, size: int, mtime_ns: int, inode: int) -> OnnxSummary | None:
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple((i.name, _tensor_dims(i)) for i in model.graph.input if i.name not in initializers)
    return OnnxSummary(inputs, model_precision(model))


def _tensor_dims(value_info: Any) -> tuple[Dim, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def _op_types(nodes: Any) -> Iterator[str]:
    """Operator types of ``nodes`` and of their subgraphs (If/Loop/Scan bodies)."""
    for node in nodes:
        yield node.op_type
        for attr in node.attribute:
            for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _op_types(graph.node)


def model_precision(model: Any) -> str:
    """The precision an ONNX model computes in, as onnxruntime runs it (it converts nothing on its own): 'int4'
    with 4-bit weight-only MatMuls, 'int8' with QOperator or QDQ operators, else the float type that holds most
    weights ('fp16', 'bf16'), else 'fp32'."""
    from onnx import TensorProto

    from certify.digests import onnx_tensors

    ops = set(_op_types(model.graph.node))
    for function in model.functions:
        ops |= set(_op_types(function.node))
    if ops & INT4_OPS:
        return "int4"
    if ops & INT8_OPS or any(op.startswith("QLinear") for op in ops):
        return "int8"
    names = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
    weights: Counter[str] = Counter()
    for tensor in onnx_tensors(model):
        if tensor.data_type in names:
            weights[names[tensor.data_type]] += functools.reduce(lambda a, b: a * b, tensor.dims, 1)
    return weights.most_common(1)[0][0] if weights else "fp32"


def free_dimensions(inputs: Sequence[tuple[str, tuple[Dim, ...]]], asked: Mapping[str, list[int]]
                    ) -> tuple[dict[str, int], list[str]]:
    """The free-dimension overrides (dim_param -> value) that fix ``inputs`` at the ``asked`` shapes, and the dims
    no override can fix (they have no name: 'x[3]'). A ModelError for an unknown input, a rank or fixed dim the
    model refuses, or one dim_param asked at two values."""
    declared = dict(inputs)
    unknown = sorted(set(asked) - set(declared))
    if unknown:
        raise ModelError(f"options.static_shapes names input(s) {unknown} the model does not have (its inputs: "
                         f"{sorted(declared)})", hint="name each input as the model does")
    overrides: dict[str, int] = {}
    seen: dict[str, str] = {}  # dim_param -> the first input axis that asked it
    unnamed = []
    for name, shape in asked.items():
        dims = declared[name]
        if len(dims) != len(shape) or any(isinstance(d, int) and d != a for d, a in zip(dims, shape, strict=False)):
            raise ModelError(f"input {name!r} is declared {list(dims)}: it cannot run at the asked static shape "
                             f"{shape}", hint="ask a shape that keeps the model's fixed dims as they are")
        for axis, (dim, value) in enumerate(zip(dims, shape, strict=True)):
            if dim is None:
                unnamed.append(f"{name}[{axis}]")
            elif isinstance(dim, str):
                if overrides.setdefault(dim, value) != value:
                    raise ModelError(f"options.static_shapes gives the model's dim {dim!r} two values: "
                                     f"{overrides[dim]} ({seen[dim]}) and {value} ({name}[{axis}])",
                                     hint="inputs that share a symbolic dim must be asked at the same size")
                seen.setdefault(dim, f"{name}[{axis}]")
    return overrides, unnamed


class OnnxRuntimeBackend:
    """Runs an ONNX file with ``onnxruntime.InferenceSession``.

    Plan keys used: ``providers`` (ordered; default from ``device``), ``threads`` (intra-op threads),
    ``options.graph_optimization`` (disable/basic/extended/all), ``options.session_config`` (a table of
    ``add_session_config_entry`` keys), ``options.provider_options`` (a list of tables, one per provider),
    ``options.static_shapes`` ({input name: shape}: each symbolic dim is fixed with a free-dimension override; a
    dynamic dim without a name cannot be, and is recorded in ``info()["not_overridden"]``).
    """

    name: ClassVar[str] = "onnxruntime"
    distributions: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnx")
    install_hint: ClassVar[str] = install_hint("onnxruntime")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "keep intra_op threads x clients within the physical cores and disable spinning "
                  "(options.session_config session.intra_op.allow_spinning = 0); memory that grows with load: cap the "
                  "CPU arena (session_config) or disable it",
        "accuracy": "calibrate static quantization on more, representative data preprocessed exactly like "
                    "inference inputs; try per_channel=True, keep sensitive layers (first/last) in float via "
                    "nodes_to_exclude, or use quantize_dynamic",
        "speed": "check that INT8 kernels really run (QDQ vs QOperator format, quant_pre_process first), which "
                 "execution provider ran, intra_op threads and batch size; INT8 gains need VNNI/AMX or large GEMMs",
        "memory": "quantize weights to INT8, set session_config 'session.use_env_allocators' or disable the CPU "
                  "arena (options.session_config) and check for duplicated initializers",
        "stability": "pin intra_op threads, disable spinning (session_config session.intra_op.allow_spinning=0) "
                     "on shared hosts, and remove background load",
    }
    thread_safe: ClassVar[bool] = True  # InferenceSession.run may be called from several threads at once

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self._session: Any = None
        self._outputs: list[str] = []
        self._summary: OnnxSummary | None = None
        self._overrides: dict[str, int] = {}  # dim_param -> value, set on the session options
        self._unnamed: list[str] = []  # asked dims that no override can fix

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def prepare(cls, ref: ModelRef) -> None:
        """Parse the model file (``onnx_summary``) before the worker notes its memory baseline: the protobuf and
        the onnx import are the harness's memory, not the model's. ``load`` parses it if this did not."""
        if ref.path is not None and ref.path.is_file():
            onnx_summary(ref.path)

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = cls._providers(ref)[0]
        detail = f"onnxruntime {ort.__version__} providers here: {', '.join(available)}"
        return wanted in available, f"{wanted} is {'' if wanted in available else 'not '}available; {detail}"

    @staticmethod
    def _providers(ref: ModelRef) -> list[str]:
        return list(ref.providers) or DEFAULT_PROVIDERS.get(ref.device_class, ["CPUExecutionProvider"])

    def _session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.ref.threads:
            opts.intra_op_num_threads = self.ref.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = self.ref.option("graph_optimization", "all")
        if level not in GRAPH_LEVELS:
            raise ModelError(f"options.graph_optimization = {level!r} is not one of {GRAPH_LEVELS}")
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                                         "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}[level])
        for key, value in dict(self.ref.option("session_config", {})).items():
            opts.add_session_config_entry(str(key), str(value))
        for dim, value in self._overrides.items():
            opts.add_free_dimension_override_by_name(dim, value)
        return opts

    def _static_shapes(self) -> None:
        """The free-dimension overrides for ``options.static_shapes``, checked against the model's inputs."""
        asked = static_shapes_option(self.ref)
        if asked is None:
            return
        if self._summary is None:
            raise ModelError(f"options.static_shapes needs the model's input dims, and {self.ref.file.name} could "
                             "not be parsed by the onnx package", hint="pip install onnx (the ort extra has it)")
        self._overrides, self._unnamed = free_dimensions(self._summary.inputs, asked)

    def load(self) -> None:
        import onnxruntime as ort

        provider_options = [dict(p) for p in self.ref.option("provider_options", ())] or None
        if self.ref.file.is_file():
            self._summary = onnx_summary(self.ref.file)
        self._static_shapes()
        try:
            self._session = ort.InferenceSession(
                str(self.ref.file), sess_options=self._session_options(),
                providers=self._providers(self.ref), provider_options=provider_options,
            )
        except Exception as exc:  # ORT raises several pybind types; keep the cause, drop the C++ trace
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime could not load {self.ref.file}: {cause}",
                             hint="check the file is a complete ONNX model (re-export it; compare its sha256)"
                             ) from None
        self._outputs = [o.name for o in self._session.get_outputs()]

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), ORT_TYPES.get(i.type, "float32"))
                for i in self._session.get_inputs()]

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._session.run(self._outputs, feeds)  # already a list: no copy
        return outputs

    def executed_device(self) -> str:
        return str(self._session.get_providers()[0])

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        opts = self._session.get_session_options()
        return {
            "framework": "onnxruntime",
            "version": ort.__version__,
            "providers_requested": self._providers(self.ref),
            "providers_active": list(self._session.get_providers()),
            "providers_available": list(ort.get_available_providers()),
            "device": PROVIDER_DEVICE.get(self.executed_device(), "unknown"),
            "intra_op_num_threads": opts.intra_op_num_threads,
            "graph_optimization": self.ref.option("graph_optimization", "all"),
            "outputs": self._outputs,
            "precision": self._summary.precision if self._summary else None,
            "static_shapes": static_shapes_option(self.ref),
            "free_dimension_overrides": self._overrides,
            "not_overridden": self._unnamed,
            **({"not_overridden_why": "dynamic dims without a dim_param cannot be fixed by a free-dimension "
                                      "override: they stay dynamic in the session"} if self._unnamed else {}),
            "compiled_shapes": {i.name: list(i.shape) for i in self._session.get_inputs()},
        }

    def close(self) -> None:
        self._session = None
