"""ONNX Runtime quantization recipes: dynamic and static (QDQ or QOperator, calibrated on the plan's dataset)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from certify.recipes import RecipeError

if TYPE_CHECKING:
    from certify.recipes.build import BuildContext
    from certify.recipes.child import Calibration

DEFAULT_SAMPLES = 200


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
                 "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul"}


def onnx_source(context: BuildContext, *, quantizing: bool = True) -> Path:
    """The source model, refused when it is not ONNX or, for a quantizing recipe, already quantized
    (re-quantizing fails obscurely)."""
    import onnx

    if context.source.suffix != ".onnx":
        raise RecipeError(f"{context.recipe.tool} {context.recipe.method} needs an ONNX source model, got "
                          f"{context.source.name}",
                          hint="set the recipe's 'from' to an ONNX model (the baseline or an ONNX candidate)")
    if not quantizing:
        return context.source
    ops = {n.op_type for n in onnx.load(str(context.source), load_external_data=False).graph.node}
    if ops & QUANTIZED_OPS:
        raise RecipeError(f"the source model {context.source.name} is already quantized "
                          f"(it has {', '.join(sorted(ops & QUANTIZED_OPS))})",
                          hint="quantize from the float model: set the recipe's 'from' to 'baseline'")
    return context.source


def quantize_dynamic(context: BuildContext, calibration: Calibration) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe, out = context.recipe, context.out_dir / "model.onnx"
    quantize_dynamic(str(onnx_source(context)), str(out),
                     weight_type=getattr(QuantType, recipe.param("weight_type", "QInt8")),
                     per_channel=bool(recipe.param("per_channel", False)),
                     reduce_range=bool(recipe.param("reduce_range", False)))
    return out


def model_feeds(model: Path, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Calibration samples keyed by the ONNX model's input names, in its input dtypes."""
    import onnx

    from certify.recipes.child import keyed_samples

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return keyed_samples(samples, [(i.name, (i.name,), onnx.helper.tensor_dtype_to_np_dtype(
        i.type.tensor_type.elem_type)) for i in graph.input if i.name not in inits])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def quantize_static(context: BuildContext, calibration: Calibration) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    recipe, source, out = context.recipe, onnx_source(context), context.out_dir / "model.onnx"
    samples = calibration.samples(int(recipe.param("samples", DEFAULT_SAMPLES)))
    if recipe.param("preprocess", True):
        source = _preprocessed(source, context.out_dir / "preprocessed.onnx")
    options: dict[str, Any] = {
        "quant_format": getattr(QuantFormat, recipe.param("format", "QDQ")),
        "activation_type": getattr(QuantType, recipe.param("activation_type", "QInt8")),
        "weight_type": getattr(QuantType, recipe.param("weight_type", "QInt8")),
        "per_channel": bool(recipe.param("per_channel", False)),
        "calibrate_method": getattr(CalibrationMethod, recipe.param("calibrate_method", "MinMax")),
    }
    quantize_static(str(source), str(out), _Reader(model_feeds(source, samples)), **options)
    Path(str(context.out_dir / "preprocessed.onnx")).unlink(missing_ok=True)
    return out


def _preprocessed(source: Path, out: Path) -> Path:
    """Shape inference and graph clean-up that ORT recommends before static quantization; the source as it is
    when the model cannot be pre-processed (e.g. it uses ops the symbolic shape inference does not know)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(out), skip_symbolic_shape=False)
    except Exception:
        return source
    return out
