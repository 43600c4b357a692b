"""Candidate recipes: a candidate in the plan may say how it is made instead of naming a file.

The progressive pipeline is baseline -> conversion -> quantization -> acceleration; each recipe names its
source (``from = "baseline"`` or another candidate), so stages chain::

    [[models.candidates]]
    name = "ov-int8"
    framework = "openvino"
    recipe = { tool = "nncf", method = "quantize", from = "ov-fp16", samples = 300 }

Recipes are validated with the plan (tool, method, parameter names and types); the harness builds each one
once, in a child process, cached by the content hash of its inputs and of the recipe (``certify.recipes.build``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from certify.errors import CertifyError, did_you_mean
from certify.frameworks import install_hint


class RecipeError(CertifyError):
    """A recipe that could not make its candidate (bad parameters, bad calibration data, a tool's failure)."""


@dataclass(frozen=True)
class Recipe:
    tool: str
    method: str
    source: str = "baseline"  # "baseline" or the name of another candidate of the same model
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    def describe(self) -> dict[str, Any]:
        return {"tool": self.tool, "method": self.method, "from": self.source, "params": _thaw(self.params),
                "stage": RECIPES[(self.tool, self.method)].stage}


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                        for v in value):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class RecipeKind:
    """What a (tool, method) takes and makes."""

    builder: str  # "module:function" run in the build child: (source, out_dir, recipe, context) -> artifact
    stage: str  # conversion | quantization | compression
    params: dict[str, Any]  # name -> type, or a tuple of allowed strings
    module: str  # what must be importable to build it
    install: str
    calibrated: bool = False  # needs calibration samples from the plan's dataset
    distributions: tuple[str, ...] = field(default=())  # recorded by version in the evidence


ORT_TYPES = ("QInt8", "QUInt8")
ORT_SELECTION = {"op_types_to_quantize": list[str], "nodes_to_exclude": list[str]}  # what ORT quantizes, or not
NNCF_MODES = ("INT8_ASYM", "INT8_SYM", "INT4_SYM", "INT4_ASYM")
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L",
              "Q3_K_M", "Q3_K_S", "Q2_K", "F16", "BF16")
LLAMACPP, ORT, OV, MLX = (install_hint(name) for name in ("llamacpp", "onnxruntime", "openvino", "mlx"))
OLIVE = "install a CPU torch first, then pip install 'edge-certify[olive]' (bash scripts/install.sh olive does both)"
RECIPES: dict[tuple[str, str], RecipeKind] = {
    ("onnxruntime", "quantize_dynamic"): RecipeKind(
        "certify.recipes.ort:quantize_dynamic", "quantization",
        {"weight_type": ORT_TYPES, "per_channel": bool, "reduce_range": bool, "preprocess": bool, "subgraphs": bool,
         **ORT_SELECTION},
        "onnxruntime.quantization", ORT, distributions=("onnxruntime", "onnx")),
    ("onnxruntime", "quantize_static"): RecipeKind(
        "certify.recipes.ort:quantize_static", "quantization",
        {"format": ("QDQ", "QOperator"), "activation_type": ORT_TYPES, "weight_type": ORT_TYPES,
         "per_channel": bool, "calibrate_method": ("MinMax", "Entropy", "Percentile"), "samples": int,
         "preprocess": bool, **ORT_SELECTION},
        "onnxruntime.quantization", ORT, calibrated=True, distributions=("onnxruntime", "onnx")),
    ("openvino", "convert"): RecipeKind(
        "certify.recipes.openvino:convert", "conversion", {"compress_to_fp16": bool},
        "openvino", OV, distributions=("openvino",)),
    ("nncf", "quantize"): RecipeKind(
        "certify.recipes.openvino:quantize", "quantization",
        {"preset": ("performance", "mixed"), "samples": int, "fast_bias_correction": bool,
         "model_type": ("transformer",), "ignored_scope": list},
        "nncf", OV, calibrated=True, distributions=("openvino", "nncf")),
    ("nncf", "compress_weights"): RecipeKind(
        "certify.recipes.openvino:compress_weights", "compression",
        {"mode": NNCF_MODES, "ratio": float, "group_size": int}, "nncf", OV, distributions=("openvino", "nncf")),
    ("nncf", "quantize_with_accuracy_control"): RecipeKind(
        "certify.recipes.openvino:quantize_with_accuracy_control", "quantization",
        {"preset": ("performance", "mixed"), "samples": int, "max_drop": float,
         "drop_type": ("relative", "absolute")},
        "nncf", OV, calibrated=True, distributions=("openvino", "nncf")),
    ("llamacpp", "quantize"): RecipeKind(
        "certify.recipes.llamacpp:quantize", "quantization",
        {"type": GGUF_TYPES, "allow_requantize": bool, "threads": int},
        "llama_cpp", LLAMACPP, distributions=("llama-cpp-python", "gguf")),
    ("mlx", "quantize"): RecipeKind(
        "certify.recipes.mlx:quantize", "quantization", {"bits": int, "group_size": int},
        "mlx.core", MLX, distributions=("mlx", "mlx-lm")),
    ("olive", "pass"): RecipeKind(
        "certify.recipes.olive:run_pass", "quantization",
        {"pass": str, "config": dict, "samples": int, "provider": str},
        "olive", OLIVE, calibrated=True, distributions=("olive-ai", "onnxruntime", "torch")),
    ("olive", "workflow"): RecipeKind(
        "certify.recipes.olive:run_workflow", "quantization", {"config": str},
        "olive", OLIVE, distributions=("olive-ai", "onnxruntime", "torch")),
}


def kind_of(recipe: Recipe) -> RecipeKind:
    return RECIPES[(recipe.tool, recipe.method)]


def unavailable(recipe: Recipe) -> str:
    """'' when the recipe's tool can be imported here, else why not and how to install it."""
    kind = kind_of(recipe)
    top = kind.module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        return f"recipe tool {recipe.tool!r} is not installed (module {top!r} missing); install: {kind.install}"
    return ""


def check_params(tool: str, method: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems with a recipe's parameters as (key, message); [] when they are fine."""
    if (tool, method) not in RECIPES:
        methods = sorted(m for t, m in RECIPES if t == tool)
        if not methods:
            tools = sorted({t for t, _ in RECIPES})
            return [("tool", f"unknown recipe tool {tool!r}{did_you_mean(tool, tools)}; known: {', '.join(tools)}")]
        return [("method", f"unknown method {method!r} for {tool}{did_you_mean(method, methods)}; "
                           f"known: {', '.join(methods)}")]
    allowed = RECIPES[(tool, method)].params
    problems = []
    for key, value in params.items():
        if key not in allowed:
            problems.append((key, f"unknown parameter {key!r} for {tool} {method}{did_you_mean(key, allowed)}; "
                                  f"known: {', '.join(allowed) or 'none'}"))
        elif isinstance(allowed[key], tuple) and value not in allowed[key]:
            problems.append((key, f"{value!r} is not one of {', '.join(allowed[key])}"))
        elif not isinstance(allowed[key], tuple) and not _is(value, allowed[key]):
            problems.append((key, f"expected {_type_name(allowed[key])}, got {value!r}"))
    return problems


def _type_name(typ: Any) -> str:
    return str(typ) if get_origin(typ) is not None else str(typ.__name__)


def _is(value: Any, typ: Any) -> bool:
    if get_origin(typ) is list:  # list[str]: a list of such items
        return isinstance(value, list) and all(isinstance(v, get_args(typ)[0]) for v in value)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    return isinstance(value, typ)
