"""ONNX Runtime backend: execution providers, session options, threads, and the provider that really ran."""

from __future__ import annotations

from collections.abc import Mapping
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


class OnnxRuntimeBackend:
    """Runs an ONNX file with ``onnxruntime.InferenceSession``.

    Plan keys used: ``providers`` (ordered; default from ``device``), ``threads`` (intra-op threads),
    ``options.graph_optimization`` (disable/basic/extended/all), ``options.session_config`` (a table of
    ``add_session_config_entry`` keys), ``options.provider_options`` (a list of tables, one per provider).
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

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime is not importable: {exc}", hint=cls.install_hint) from None

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
        return opts

    def load(self) -> None:
        import onnxruntime as ort

        provider_options = [dict(p) for p in self.ref.option("provider_options", ())] or None
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
        }

    def close(self) -> None:
        self._session = None
