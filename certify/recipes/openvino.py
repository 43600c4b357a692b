"""OpenVINO and NNCF recipes: conversion to an IR, post-training INT8 quantization, weight compression, and
quantization with accuracy control against the plan's own metric.

Every recipe reads its source (ONNX through ``openvino.convert_model``, an IR through ``Core.read_model``) and
writes ``model.xml`` + ``model.bin`` into the build folder. Calibration samples come from the plan's dataset,
keyed by the OpenVINO model's input names ('' = the model's only input) and cast to its input types.
``ignored_scope`` takes node names as OpenVINO's converter names them (the converter may fold an ONNX node into
another and name the result after its output, e.g. a last MatMul followed by Identity 'y' becomes 'y'); a name
the model does not have is refused with the names of its layers that hold weights.

``quantize_with_accuracy_control`` validates on the first ``VALIDATION_CAP`` samples of the plan's dataset (NNCF
re-validates many times while it reverts layers to float). Its validation function scores the plan's metric
(``certify.metrics``) on the compiled model's first output against the labels and, for metrics that compare with
a baseline (``top1_agreement``, ``cosine_similarity``), against the source model's outputs computed once (in f32
on the CPU, as NNCF compiles the models it validates: not in the BF16 the CPU plugin may pick by default). With
``drop_type = "relative"`` (the default) it returns the *retention* the accuracy gate computes (candidate /
source for higher-is-better metrics, source / candidate for lower-is-better ones such as ``rmse``), so NNCF's
relative drop is exactly ``1 - retention`` and ``max_drop`` (default: the policy's allowed loss) means what the
gate means. With ``drop_type = "absolute"`` it returns the metric itself, negated when lower is better.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from certify.errors import did_you_mean
from certify.recipes import RecipeError

if TYPE_CHECKING:
    from certify.recipes.build import BuildContext
    from certify.recipes.child import Calibration

DEFAULT_SAMPLES = 300
VALIDATION_CAP = 1000  # samples of the plan's dataset that accuracy control validates on
IR_NAME = "model.xml"
QUANTIZED_OPS = {"FakeQuantize", "FakeConvert"}
WEIGHTED_OPS = {"MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData",
                "GroupConvolutionBackpropData"}  # what NNCF quantizes (and ignored_scope usually names)
INT8_MODES = ("INT8_ASYM", "INT8_SYM")
INTEGER_TYPES = {"i8", "u8", "i4", "u4", "nf4", "i2", "u2", "u1"}
SOURCE_HINT = "set the recipe's 'from' to the baseline or to a candidate that is an ONNX or OpenVINO IR model"


def convert(context: BuildContext, calibration: Calibration) -> Path:
    """The source as an OpenVINO IR: FP32 weights, or FP16 weights with ``compress_to_fp16 = true``."""
    model = read_source(context.source)
    return save_ir(model, context.out_dir, compress_to_fp16=bool(context.recipe.param("compress_to_fp16", False)))


def quantize(context: BuildContext, calibration: Calibration) -> Path:
    """NNCF post-training INT8 quantization (weights and activations), calibrated on the plan's dataset."""
    nncf = _nncf(context.seed)
    model = float_source(context.source)
    feeds = ov_feeds(model, calibration.samples(int(context.recipe.param("samples", DEFAULT_SAMPLES))))
    options = _quantize_options(nncf, model, context)
    try:
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **options)
    except nncf.errors.ValidationError as exc:  # e.g. an ignored_scope node that is not in NNCF's graph
        if "ignored_scope" not in options:
            raise
        raise _ignored_scope_error(exc) from None
    return save_ir(quantized, context.out_dir)


def compress_weights(context: BuildContext, calibration: Calibration) -> Path:
    """NNCF weight-only compression (INT8 by default; INT4 modes take ``ratio`` and ``group_size``)."""
    mode = str(context.recipe.param("mode", "INT8_ASYM"))
    options = compression_options(mode, context.recipe.param("ratio"), context.recipe.param("group_size"))
    nncf = _nncf(context.seed)
    model = float_source(context.source)
    before = integer_constants(model)
    try:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode[mode], **options)
    except nncf.errors.InvalidGroupSizeError as exc:
        size = options.get("group_size", "NNCF's default (128)")
        raise RecipeError(f"group_size = {size} does not fit the layers of {context.source.name}: "
                          f"{_first_line(exc)}",
                          hint="choose a group_size that divides every compressed layer's input channels "
                               "(e.g. 16, 32, 64), or use an INT8 mode") from None
    if integer_constants(compressed) == before:
        raise RecipeError(f"nncf.compress_weights found no float weights to compress in {context.source.name}",
                          hint="compress a float model whose MatMul/Convolution/embedding layers hold constant "
                               "weights: set the recipe's 'from' to the baseline or an FP32/FP16 conversion")
    return save_ir(compressed, context.out_dir)


def quantize_with_accuracy_control(context: BuildContext, calibration: Calibration) -> Path:
    """NNCF INT8 quantization that reverts the layers costing most accuracy to float until the plan's metric
    drops by at most ``max_drop`` (default: the policy's allowed loss) on the plan's dataset."""
    recipe = context.recipe
    drop_type = str(recipe.param("drop_type", "relative"))
    max_drop = float(recipe.param("max_drop", context.max_drop))
    if not 0.0 <= max_drop < (1.0 if drop_type == "relative" else float("inf")):
        raise RecipeError(f"max_drop = {max_drop} is out of range for a {drop_type} drop",
                          hint="a relative max_drop is a share of the metric, e.g. 0.05 for 5%")
    nncf = _nncf(context.seed)
    model = float_source(context.source)
    feeds = ov_feeds(model, calibration.samples(int(recipe.param("samples", DEFAULT_SAMPLES))))
    validation = Validation(model, calibration, context.metric, relative=drop_type == "relative")
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(feeds), nncf.Dataset(range(validation.size), validation.feed), validation,
        max_drop=max_drop, drop_type=nncf.DropType[drop_type.upper()], subset_size=len(feeds),
        **_quantize_options(nncf, model, context))
    return save_ir(quantized, context.out_dir)


def read_source(source: Path) -> Any:
    """The source model as an ``openvino.Model``; a RecipeError naming the file when it is not ONNX/IR or
    OpenVINO cannot read it."""
    import openvino as ov

    from certify.backends.openvino import first_cause

    if source.suffix not in (".onnx", ".xml"):
        raise RecipeError(f"OpenVINO recipes need an ONNX (.onnx) or OpenVINO IR (.xml) source model, "
                          f"got {source.name}", hint=SOURCE_HINT)
    try:
        return ov.convert_model(str(source)) if source.suffix == ".onnx" else ov.Core().read_model(str(source))
    except Exception as exc:  # pybind RuntimeError with nested C++ locations: keep the cause only
        bin_hint = f" and check {source.with_suffix('.bin').name} sits next to it" if source.suffix == ".xml" else ""
        raise RecipeError(f"OpenVINO could not read the source model {source.name}: {first_cause(exc)}",
                          hint=f"check the source model with `certify doctor`{bin_hint}; {SOURCE_HINT}") from None


def float_source(source: Path) -> Any:
    """The source model, refused when NNCF already quantized it (quantizing twice stacks FakeQuantize ops)."""
    model = read_source(source)
    found = sorted({op.get_type_name() for op in model.get_ops()} & QUANTIZED_OPS)
    if found:
        raise RecipeError(f"the source model {source.name} is already quantized (it has {', '.join(found)})",
                          hint="quantize or compress the float model: set the recipe's 'from' to the baseline "
                               "or an FP32/FP16 conversion")
    return model


def save_ir(model: Any, out_dir: Path, *, compress_to_fp16: bool = False) -> Path:
    """``model.xml`` + ``model.bin`` in ``out_dir`` (``compress_to_fp16`` is ignored by OpenVINO for models
    NNCF optimized: their weights keep the precision NNCF chose)."""
    import openvino as ov

    out = out_dir / IR_NAME
    ov.save_model(model, str(out), compress_to_fp16=compress_to_fp16)
    return out


def ov_feeds(model: Any, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Samples keyed by the model's input names (any of a port's tensor names matches) in its input types, each
    checked against the port's shape."""
    import openvino as ov

    from certify.recipes.child import keyed_samples

    ports = {port.get_any_name(): port for port in model.inputs}
    feeds = keyed_samples(samples, [(name, tuple(sorted(port.get_names())), port.get_element_type().to_dtype())
                                    for name, port in ports.items()])
    for name, array in feeds[0].items():
        if not ports[name].get_partial_shape().compatible(ov.PartialShape(list(array.shape))):
            raise RecipeError(f"calibration data for model input {name!r} has shape {list(array.shape)} "
                              f"(one sample), the model takes {ports[name].get_partial_shape()}",
                              hint="the plan's dataset must hold the model's inputs, one row per sample")
    return feeds


def integer_constants(model: Any) -> int:
    """How many constants hold integer weights (what weight compression makes)."""
    return sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
               and op.get_output_element_type(0).get_type_name() in INTEGER_TYPES)


def compression_options(mode: str, ratio: Any, group_size: Any) -> dict[str, Any]:
    """compress_weights keyword arguments; ratio and group_size only mean something for 4-bit modes."""
    given = {k: v for k, v in (("ratio", ratio), ("group_size", group_size)) if v is not None}
    if mode in INT8_MODES and given:
        raise RecipeError(f"{' and '.join(given)} only apply to 4-bit modes, not {mode} (which compresses every "
                          f"layer per channel)", hint=f"drop {' and '.join(given)}, or use mode INT4_SYM/INT4_ASYM")
    if ratio is not None and not 0.0 < float(ratio) <= 1.0:
        raise RecipeError(f"ratio = {ratio} must be in (0, 1]: the share of layers compressed to 4 bits",
                          hint="e.g. ratio = 0.8 keeps 20% of the layers in INT8")
    return {k: (float(v) if k == "ratio" else int(v)) for k, v in given.items()}


def _quantize_options(nncf: Any, model: Any, context: BuildContext) -> dict[str, Any]:
    recipe = context.recipe
    options: dict[str, Any] = {"fast_bias_correction": bool(recipe.param("fast_bias_correction", True))}
    if recipe.param("preset"):
        options["preset"] = nncf.QuantizationPreset[str(recipe.param("preset")).upper()]
    if recipe.param("model_type"):
        options["model_type"] = nncf.ModelType[str(recipe.param("model_type")).upper()]
    if recipe.param("ignored_scope"):
        options["ignored_scope"] = ignored_scope(nncf, model, recipe.param("ignored_scope"), context.source)
    return options


def ignored_scope(nncf: Any, model: Any, names: Iterable[Any], source: Path) -> Any:
    """An ``nncf.IgnoredScope`` of node names, each checked against the model's nodes first."""
    names = list(names)
    known = {op.get_friendly_name() for op in model.get_ops()}
    unknown = [name for name in names if not isinstance(name, str) or name not in known]
    if unknown:
        listed = ", ".join(f"{name!r}{did_you_mean(str(name), known)}" for name in unknown)
        raise RecipeError(f"ignored_scope names node(s) that {source.name} does not have: {listed}",
                          hint=f"use node names of the model; its layers with weights: {weighted_nodes(model)}")
    return nncf.IgnoredScope(names=names)


def weighted_nodes(model: Any, limit: int = 12) -> str:
    names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_OPS]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "") or "none"


def _ignored_scope_error(exc: Exception) -> RecipeError:
    return RecipeError(f"NNCF refused the recipe's ignored_scope: {_first_line(exc)}",
                       hint="name nodes that NNCF quantizes (MatMul, Convolution ...), as OpenVINO names them")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _nncf(seed: int) -> Any:
    """nncf, quiet (WARNING) and seeded (Python, NumPy and, when NNCF loaded it, torch)."""
    import nncf

    nncf.set_log_level(logging.WARNING)
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    return nncf


class Validation:
    """NNCF's ``validation_fn`` for accuracy control: items are sample indices; ``feed(i)`` is the model input."""

    def __init__(self, model: Any, calibration: Calibration, metric: str, *, relative: bool) -> None:
        import openvino as ov

        from certify.metrics import METRICS

        _, labels = calibration.data()
        self.feeds = ov_feeds(model, calibration.samples(VALIDATION_CAP))
        self.size = len(self.feeds)
        self.labels = labels[: self.size] if labels is not None else None
        if metric not in METRICS or METRICS[metric].per_sample is None:
            raise RecipeError(f"accuracy-aware quantization scores samples one by one: metric {metric!r} is not a "
                              "built-in per-sample metric", hint="use the plain quantize method, or a metric such "
                              f"as {', '.join(m for m, v in METRICS.items() if not v.language_model)}")
        self.metric, self.relative = METRICS[metric], relative
        self.scores: Any = self.metric.per_sample
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # as NNCF compiles
        self.baseline = self.outputs(compiled, range(self.size))

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return self.feeds[index]

    def outputs(self, compiled: Any, indices: Iterable[int]) -> np.ndarray:
        return np.concatenate([np.asarray(compiled(self.feeds[i])[0]) for i in indices])

    def __call__(self, compiled: Any, items: Iterable[int]) -> tuple[float, list[float]]:
        """(score, per-sample scores), higher is better: retention (relative) or the signed metric (absolute)."""
        from certify.measure.accuracy import retention

        indices = np.asarray(list(items), dtype=np.int64)
        labels = self.labels[indices] if self.labels is not None else None
        base = self.baseline[indices]
        scores = self.scores(self.outputs(compiled, indices), labels, base)
        sign = 1.0 if self.metric.higher_is_better else -1.0
        if self.relative:
            base_value = self.metric.reduce(self.scores(base, labels, base))
            score = float(retention(self.metric, base_value, self.metric.reduce(scores)))
        else:
            score = sign * float(self.metric.reduce(scores))
        return score, [sign * float(s) for s in scores]
