"""Olive backend: an ONNX model that Olive produced, run by ONNX Runtime with the execution provider Olive targeted.

Certifying Olive's output needs only onnxruntime: ``import_runtime`` never imports olive (torch and transformers,
~6 s). The targeted provider comes from, first found, next to the model:

1. ``olive.json``, written by the harness's Olive recipes (``certify.recipes.olive``): Olive's accelerator spec;
2. Olive's own ``model_config.json`` (an Olive output folder made outside the harness): its
   ``inference_settings.execution_provider``, which passes such as OrtSessionParamsTuning set. olive-ai 0.13
   writes the target nowhere else: its ``footprint.json`` gives only the passes and their configs.

The plan's ``providers`` always win; without them the session asks for the target, then CPU as the fallback.
``executed_device()`` stays what ONNX Runtime really ran, so a CUDA-targeted model that fell back to CPU says so.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from certify.backends.onnxruntime import PROVIDER_DEVICE, OnnxRuntimeBackend
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

CPU = "CPUExecutionProvider"
RECORD = "olive.json"  # certify.recipes.olive.RECORD (not imported: that module is the build side)


@functools.lru_cache(maxsize=32)
def olive_facts(model: Path) -> dict[str, Any]:
    """What is known about how Olive made ``model``: ``target`` (the execution provider Olive targeted, or None),
    ``target_device``, ``source`` (the file that said so), ``version``, ``passes``; {} for a model with no Olive
    files beside it."""
    record = _read_json(model.parent / RECORD)
    if record.get("tool") == "olive":
        return {"target": record.get("execution_provider"), "target_device": record.get("device"),
                "source": RECORD, "version": record.get("olive_version"), "method": record.get("method"),
                "passes": [p.get("pass") for p in record.get("passes", [])]}
    config = _read_json(model.parent / "model_config.json")
    if str(config.get("type", "")).lower() != "onnxmodel":
        return {}
    target = _first_provider(((config.get("config") or {}).get("inference_settings") or {}).get("execution_provider"))
    return {"target": target, "target_device": PROVIDER_DEVICE.get(target, "cpu") if target else None,
            "source": "model_config.json" if target else None, "version": None, "method": None,
            "passes": _footprint_passes(model.parent)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_provider(providers: Any) -> str | None:
    """Olive writes providers as names or (name, options) pairs."""
    if not isinstance(providers, list) or not providers:
        return None
    first = providers[0]
    return str(first[0] if isinstance(first, (list, tuple)) and first else first)


def _footprint_passes(folder: Path) -> list[str]:
    """The passes that made the output model, first to last, from Olive's output footprint."""
    nodes = _read_json(folder / "output_footprint.json") or _read_json(folder / "footprint.json")
    made = [n for n in nodes.values() if isinstance(n, dict) and n.get("from_pass")]
    return [str(n["from_pass"]) for n in sorted(made, key=lambda n: n.get("end_time") or 0)]


class OliveBackend(OnnxRuntimeBackend):
    """Runs Olive's output ONNX model with ``onnxruntime.InferenceSession`` on the provider Olive targeted.

    Plan keys: those of the onnxruntime backend; ``providers`` overrides the target Olive recorded.
    """

    name: ClassVar[str] = "olive"
    distributions: ClassVar[tuple[str, ...]] = ("olive-ai", "onnxruntime", "onnxruntime-gpu", "onnxruntime-qnn", "onnx")
    install_hint: ClassVar[str] = install_hint("olive")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": OnnxRuntimeBackend.hints["stress"],  # Olive's output is served by ONNX Runtime
        "accuracy": "calibrate OnnxStaticQuantization on more, representative samples (recipe samples), try "
                    "per_channel = true or calibrate_method = 'Entropy'/'Percentile', keep sensitive layers in float "
                    "(nodes_to_exclude), use OnnxDynamicQuantization, or an accuracy-aware pass "
                    "(OpenVINOQuantizationWithAccuracy, IncQuantization)",
        "speed": "compare the provider Olive targeted with the one that ran (info.olive); target the device's own "
                 "provider (recipe provider), add OrtTransformersOptimization / OrtSessionParamsTuning passes; QDQ "
                 "INT8 gains need VNNI/AMX or an NPU/GPU provider",
        "memory": "quantize weights (OnnxDynamicQuantization; OnnxBlockWiseRtnQuantization for 4-bit MatMul), "
                  "OnnxFloatToFloat16 for GPU targets, or disable the CPU arena (options.session_config)",
        "stability": "pin threads (OrtSessionParamsTuning finds intra_op threads), disable spinning "
                     "(session.intra_op.allow_spinning=0) and remove background load",
        "fallback": "Olive built this model for one provider: certify it on a host that has that provider, or "
                    "run an Olive pass with the fallback provider as target and certify that model too",
    }

    @staticmethod
    def _providers(ref: ModelRef) -> list[str]:
        if ref.providers:
            return list(ref.providers)
        target = olive_facts(ref.path).get("target") if ref.path is not None else None
        if target:
            return [target] if target == CPU else [target, CPU]
        return OnnxRuntimeBackend._providers(ref)

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        """Ok when a provider in the list that serves the plan's device class is installed here."""
        import onnxruntime as ort

        available, providers = ort.get_available_providers(), cls._providers(ref)
        serving = [p for p in providers if PROVIDER_DEVICE.get(p, "cpu") == ref.device_class]
        ok = any(p in available for p in serving)
        facts = olive_facts(ref.path) if ref.path is not None else {}
        target = f"Olive targeted {facts['target']}" if facts.get("target") else "no Olive target recorded"
        wanted = ", ".join(serving) or f"none of {', '.join(providers)} serves device {ref.device_class!r}"
        return ok, (f"{wanted} {'is' if ok else 'is not'} available; {target}; "
                    f"onnxruntime {ort.__version__} providers here: {', '.join(available)}")

    def info(self) -> dict[str, Any]:
        info = super().info()
        facts = olive_facts(self.ref.file)
        target = facts.get("target")
        info["framework"], info["runtime"] = "olive", "onnxruntime"
        info["olive"] = {
            **facts, "target_ran": (self.executed_device() == target) if target else None,
            "providers_from": "plan" if self.ref.providers else ("olive" if target else "device default"),
        }
        return info
