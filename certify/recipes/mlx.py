"""MLX quantization recipe: an ``mlx.nn`` model folder (see ``certify.backends.mlx``) quantized with ``nn.quantize``.

Parameters: ``bits`` (2, 3, 4, 5, 6 or 8; default 4) and ``group_size`` (32, 64 or 128; default 64), MLX's affine
weight quantization. Every ``Linear`` / ``Embedding`` layer whose rows divide into groups of ``group_size`` is
quantized; the others stay in float (listed as skipped in the log). The output folder's ``model.json`` records
the parameters and the exact layers, so the backend re-applies ``nn.quantize`` to them before loading the weights.
No calibration data is used (MLX's quantization is weight-only, round-to-nearest per group).

An mlx-lm folder (``config.json``, ``model*.safetensors``) is quantized by mlx-lm's own utilities, as
``mlx_lm.convert --quantize`` does but from the local folder only (``convert`` itself needs a tokenizer and
writes a model card): ``load_model``, ``quantize_model`` (every layer whose rows divide into groups; the model's own
``quant_predicate`` if it has one), ``save_model`` and ``save_config`` (``"quantization": {"group_size", "bits",
"mode"}``, which mlx-lm's loader re-applies). The source's other files (tokenizer, generation config) are copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from certify.errors import ModelError
from certify.recipes import RecipeError

if TYPE_CHECKING:
    from certify.recipes.build import BuildContext
    from certify.recipes.child import Calibration

DEFAULT_BITS = 4
DEFAULT_GROUP_SIZE = 64
FOLDER = "mlx-q{bits}-g{group_size}"


def checked_params(bits: object, group_size: object) -> tuple[int, int]:
    from certify.backends.mlx_folders import BITS, GROUP_SIZES

    if isinstance(bits, bool) or bits not in BITS:
        raise RecipeError(f"mlx quantize: bits = {bits!r} is not supported",
                          hint=f"use one of {', '.join(map(str, BITS))} (8 keeps accuracy best)")
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise RecipeError(f"mlx quantize: group_size = {group_size!r} is not supported",
                          hint=f"use one of {', '.join(map(str, GROUP_SIZES))}")
    assert isinstance(bits, int) and isinstance(group_size, int)
    return bits, group_size


def quantize(context: BuildContext, calibration: Calibration) -> Path:
    """Quantize the source folder into ``out_dir/mlx-q<bits>-g<group_size>/`` (model.json + weights)."""
    from certify.backends import mlx_folders as backend

    bits, group_size = checked_params(context.recipe.param("bits", DEFAULT_BITS),
                                      context.recipe.param("group_size", DEFAULT_GROUP_SIZE))
    if backend.is_mlx_lm_folder(context.source):
        return quantize_mlx_lm(context, bits, group_size)
    try:
        spec = backend.read_spec(context.source)
        if spec.quantization:
            raise RecipeError(f"mlx quantize: the source {spec.folder} is already quantized "
                              f"({spec.quantization.get('bits')}-bit)",
                              hint="quantize from the float model (set the recipe's 'from' to it)")
        module, _ = backend.load_module(spec)
    except ModelError as exc:
        raise RecipeError(f"mlx quantize: cannot load the source: {exc.message}", hint=exc.hint) from None
    layers = backend.quantizable_layers(module, group_size)
    if not layers:
        raise RecipeError(f"mlx quantize: no layer of {spec.factory} has rows divisible by group_size {group_size}",
                          hint="use a smaller group_size (32)")
    backend.quantize_layers(module, bits, group_size, layers)
    out = context.out_dir / FOLDER.format(bits=bits, group_size=group_size)
    out.mkdir(parents=True, exist_ok=True)
    module.save_weights(str(out / "weights.safetensors"))
    raw = dict(spec.raw)
    raw["quantization"] = {"bits": bits, "group_size": group_size, "mode": "affine", "layers": layers}
    (out / "model.json").write_text(json.dumps(raw, indent=2))
    return out


def quantize_mlx_lm(context: BuildContext, bits: int, group_size: int) -> Path:
    """Quantize an mlx-lm folder into ``out_dir/mlx-q<bits>-g<group_size>/`` (an mlx-lm folder)."""
    from certify.backends import mlx_folders as backend

    source = backend.model_folder(context.source)
    try:
        model, config = backend.load_mlx_lm(source)
    except ModelError as exc:
        raise RecipeError(f"mlx quantize: cannot load the source: {exc.message}", hint=exc.hint) from None
    if config.get("quantization"):
        raise RecipeError(f"mlx quantize: the source {source} is already quantized "
                          f"({backend.quantization_of(config)})",
                          hint="quantize from the float model (set the recipe's 'from' to it)")
    utils = backend.mlx_lm_module("utils")
    model, config = utils.quantize_model(model, config, group_size, bits, mode="affine")
    if not backend.quantized_layer_count(model):
        raise RecipeError(f"mlx quantize: no layer of {source} has rows divisible by group_size {group_size}",
                          hint="use a smaller group_size (32)")
    out = context.out_dir / FOLDER.format(bits=bits, group_size=group_size)
    utils.save_model(out, model)
    utils.save_config(config, out / backend.CONFIG_FILE)
    for file in sorted(source.iterdir()):
        if file.is_file() and not (out / file.name).exists() and not file.name.startswith("model"):
            shutil.copy2(file, out / file.name)
    return out
