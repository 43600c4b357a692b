"""MLX model folders: reading and checking the two kinds the MLX backend runs (``certify.backends.mlx`` describes
them), building their modules, and the quantization helpers the ``mlx quantize`` recipe shares. MLX and mlx-lm are
imported on first use, never when this module is imported."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.backends.base import TensorSpec
from certify.errors import ModelError

SPEC_FILE = "model.json"
WEIGHT_FILES = ("weights.safetensors", "weights.npz")
LANGUAGE_MODEL = "language_model"
MLX_LM = "mlx_lm"  # the kind of an mlx-lm folder
CONFIG_FILE = "config.json"  # an mlx-lm folder's
MLX_LM_WEIGHTS = "model*.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
PREFILL_STEP = 2048  # prompt tokens per forward pass while filling the KV cache (mlx-lm's default)
DEFAULT_CONTEXT = 128
THREADS = "not configurable in MLX"
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def mlx_core() -> Any:
    import mlx.core

    return mlx.core


def mlx_nn() -> Any:
    import mlx.nn

    return mlx.nn


def mlx_lm_module(module: str) -> Any:
    """``mlx_lm.<module>`` (e.g. ``utils``, ``models.cache``), imported on first use."""
    return importlib.import_module(f"mlx_lm.{module}")


@dataclass(frozen=True)
class MlxModelSpec:
    """A folder's ``model.json``, checked."""

    folder: Path
    factory: str
    kwargs: dict[str, Any]
    kind: str = "array"
    vocab: int = 0
    tokenizer: str = "bytes"
    context: int = DEFAULT_CONTEXT
    inputs: tuple[TensorSpec, ...] = ()
    quantization: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        found = [self.folder / name for name in WEIGHT_FILES if (self.folder / name).is_file()]
        if not found:
            raise ModelError(f"mlx: no weights in {self.folder} (looked for {', '.join(WEIGHT_FILES)})",
                             hint="save them with model.save_weights('weights.safetensors') next to model.json")
        return found[0]


def model_folder(path: Path) -> Path:
    return path.parent if path.name in (SPEC_FILE, CONFIG_FILE) else path


def is_mlx_lm_folder(path: Path) -> bool:
    """An mlx-lm model folder: ``config.json`` and no ``model.json``."""
    folder = model_folder(path)
    return not (folder / SPEC_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def read_spec(path: Path) -> MlxModelSpec:
    """Read and check ``model.json``; every problem is a ModelError naming the file and the key."""
    folder = model_folder(path)
    file = folder / SPEC_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelError(f"mlx: {file} does not exist", hint="an MLX model is a folder with model.json and "
                         "weights.safetensors (mlx.nn) or with config.json and model.safetensors (mlx-lm); check "
                         "the plan's path") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"mlx: {file} is not valid JSON: {exc}") from None
    factory = raw.get("factory") if isinstance(raw, dict) else None
    if not isinstance(factory, str) or ":" not in factory:
        raise ModelError(f"mlx: {file}: 'factory' must be 'package.module:function', got {factory!r}")
    kind = raw.get("kind", "array")
    if kind not in ("array", LANGUAGE_MODEL):
        raise ModelError(f"mlx: {file}: 'kind' = {kind!r} must be 'array' or '{LANGUAGE_MODEL}'")
    vocab = raw.get("vocab", 0)
    if kind == LANGUAGE_MODEL and (not isinstance(vocab, int) or vocab <= 0):
        raise ModelError(f"mlx: {file}: a language model needs 'vocab' (a positive integer), got {vocab!r}")
    if raw.get("tokenizer", "bytes") != "bytes":
        raise ModelError(f"mlx: {file}: 'tokenizer' = {raw.get('tokenizer')!r}: only 'bytes' is supported")
    inputs = tuple(TensorSpec(str(i["name"]), tuple(i["shape"]), str(i.get("dtype", "float32")))
                   for i in raw.get("inputs", ()))
    return MlxModelSpec(folder, factory, dict(raw.get("kwargs", {})), kind, int(vocab), "bytes",
                        int(raw.get("context", DEFAULT_CONTEXT)), inputs, dict(raw.get("quantization", {})), raw)


def build_module(spec: MlxModelSpec) -> Any:
    """Call the factory; a missing module or function, or a factory that fails, is a ModelError."""
    module_name, _, attr = spec.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"mlx: the factory {spec.factory!r} of {spec.folder} cannot be imported: {exc}",
                         hint="install the package that defines the model, or fix 'factory' in model.json") from None
    try:
        module = factory(**spec.kwargs)
    except Exception as exc:
        raise ModelError(f"mlx: the factory {spec.factory}(**{spec.kwargs}) failed: {type(exc).__name__}: {exc}",
                         hint="check 'kwargs' in model.json against the factory's signature") from None
    if not isinstance(module, mlx_nn().Module):
        raise ModelError(f"mlx: the factory {spec.factory!r} returned {type(module).__name__}, not an mlx.nn.Module")
    return module


def quantizable_layers(module: Any, group_size: int) -> list[str]:
    """Paths of the layers ``nn.quantize`` can quantize at this group size (their rows divide into groups)."""
    found: list[str] = []

    def visit(path: str, layer: Any) -> None:
        weight = getattr(layer, "weight", None)
        if hasattr(layer, "to_quantized") and weight is not None and weight.shape[-1] % group_size == 0:
            found.append(path)
        return None

    module.apply_to_modules(visit)
    return found


def quantize_layers(module: Any, bits: int, group_size: int, layers: list[str], mode: str = "affine") -> None:
    """``nn.quantize`` on exactly ``layers`` (in place): what the recipe did, the backend repeats."""
    wanted = set(layers)
    mlx_nn().quantize(module, group_size=group_size, bits=bits, mode=mode,
                   class_predicate=lambda path, _layer: path in wanted)


def parameter_arrays(module: Any) -> list[Any]:
    """The module's parameter arrays (quantized layers hold packed weights, scales and biases)."""
    from mlx.utils import tree_flatten

    return [leaf[1] for leaf in tree_flatten(module.parameters())]


def quantized_layer_count(module: Any) -> int:
    nn = mlx_nn()
    return sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in module.named_modules())


def parameter_count(module: Any) -> int:
    return sum(int(v.size) for v in parameter_arrays(module))


def load_module(spec: MlxModelSpec) -> tuple[Any, int]:
    """Build, (re-)quantize and load the weights strictly; returns (module, float parameter count)."""
    module = build_module(spec)
    count = parameter_count(module)
    quant = spec.quantization
    if quant:
        quantize_layers(module, int(quant["bits"]), int(quant["group_size"]), list(quant.get("layers", [])),
                        str(quant.get("mode", "affine")))
    weights = spec.weights
    try:
        module.load_weights(str(weights), strict=True)
    except Exception as exc:
        raise ModelError(f"mlx: the weights {weights} do not fit the model {spec.factory}: {first_line(exc)}",
                         hint="the weights were saved from another architecture, other kwargs or another "
                              "quantization; rebuild them, or fix model.json") from None
    module.eval()
    mlx_core().eval(module.parameters())
    return module, count


# --------------------------------------------------------------------------- mlx-lm folders


def mlx_lm_model_type(folder: Path) -> str:
    """The ``model_type`` of an mlx-lm folder's ``config.json``, checked before mlx-lm sees the file."""
    file = folder / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"mlx: {file} is not valid JSON: {exc}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not isinstance(model_type, str) or not re.fullmatch(r"[A-Za-z0-9_]+", model_type):
        raise ModelError(f"mlx: {file}: 'model_type' must name an mlx-lm architecture (e.g. 'llama'), "
                         f"got {model_type!r}", hint="an mlx-lm folder's config.json is the one mlx_lm.convert "
                         "writes; an mlx.nn folder needs model.json instead")
    return model_type


def load_mlx_lm(folder: Path) -> tuple[Any, dict[str, Any]]:
    """Load an mlx-lm folder with ``mlx_lm.utils.load_model`` (model, config); every failure is a ModelError
    naming the folder's ``config.json``."""
    file = folder / CONFIG_FILE
    model_type = mlx_lm_model_type(folder)
    try:
        utils = mlx_lm_module("utils")
    except ImportError as exc:
        raise ModelError(f"mlx: {folder} is an mlx-lm folder but mlx-lm is not importable: {exc}",
                         hint="pip install 'edge-certify[mlx]' (it includes mlx-lm)") from None
    if not list(folder.glob(MLX_LM_WEIGHTS)):
        raise ModelError(f"mlx: no weights in {folder} (looked for {MLX_LM_WEIGHTS})",
                         hint="an mlx-lm folder holds config.json and model.safetensors, as mlx_lm.convert writes")
    try:
        # mlx-lm >= 0.32 can run a folder's own model code unless told not to; older releases never do
        safe = {"trust_remote_code": False} if "trust_remote_code" in inspect.signature(utils.load_model).parameters \
            else {}
        model, config = utils.load_model(folder, strict=True, **safe)
    except Exception as exc:
        if isinstance(exc, ValueError) and "not supported" in str(exc):
            raise ModelError(f"mlx: {file}: model_type {model_type!r} is not an architecture of mlx-lm "
                             f"{mlx_lm_version()}", hint="fix 'model_type', or upgrade mlx-lm") from None
        raise ModelError(f"mlx: {file} (model_type {model_type!r}) does not load with mlx-lm {mlx_lm_version()}: "
                         f"{type(exc).__name__}: {first_line(exc)}", hint="config.json must describe the architecture "
                         "the model*.safetensors weights were saved from; rebuild the folder with mlx_lm.convert"
                         ) from None
    return model, config


def mlx_lm_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mlx-lm")
    except metadata.PackageNotFoundError:
        return "?"


def mlx_lm_vocab(folder: Path, model: Any, config: Mapping[str, Any]) -> int:
    vocab = config.get("vocab_size") or getattr(getattr(model, "args", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= 0:
        raise ModelError(f"mlx: {folder / CONFIG_FILE} gives no 'vocab_size' (a positive integer), got {vocab!r}")
    return vocab


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quantization_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """An mlx-lm config's default quantization (its per-layer entries left out), or None."""
    quant = config.get("quantization")
    if not isinstance(quant, dict):
        return None
    return {k: v for k, v in quant.items() if not isinstance(v, (dict, bool))} or None
