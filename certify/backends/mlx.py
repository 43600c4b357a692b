"""MLX backend (``mlx``): an ``mlx.nn`` model kept as a folder, run as an array model or a ``LanguageModel``.

The folder (the plan's ``path``; a path to its ``model.json`` works too) holds:

- ``model.json``: ``{"factory": "package.module:function", "kwargs": {...}}``. The factory builds the
  ``mlx.nn.Module`` (importing it runs that package's code: pin the folder's digest in the plan). Optional keys:
  ``"inputs"``: ``[{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]`` for an array model (default: one
  float32 input ``x`` of shape ``[batch, ?]``); ``"kind": "language_model"`` with ``"vocab"`` (required),
  ``"tokenizer": "bytes"`` (token id = UTF-8 byte, so ``vocab`` must be >= 256 for arbitrary text) and
  ``"context"`` (default 128); ``"quantization": {"bits", "group_size", "mode", "layers"}`` written by the
  ``mlx quantize`` recipe: ``nn.quantize`` is re-applied to exactly those layers before the weights load.
- ``weights.safetensors`` (or ``weights.npz``), as ``nn.Module.save_weights`` writes it; loaded strictly (a
  missing, extra or mis-shaped parameter is a ModelError).

A language model's module maps int tokens ``[B, n]`` to logits ``[B, n, vocab]``. It has no KV cache here, so
``decode_step`` re-runs the growing window (at most ``options.n_ctx`` tokens, default the model's ``context``)
and keeps its last position's logits: generation speed is therefore O(n) per token, a conservative figure for
an MLX deployment that caches keys and values (``mlx-lm``). Correctness comes first: the last logits equal those
``infer`` gives for the same window.

Devices: ``cpu`` always (on Linux this is the MLX CPU backend of ``mlx[cpu]``); ``gpu`` only where Metal is
available (Apple silicon). Speed measured off Apple silicon is the MLX CPU backend's and not representative of
an ``apple`` target: ``info()["representative_for"]`` says which device class the numbers stand for.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec
from certify.errors import BackendUnavailable, ModelError
from certify.plan import ModelRef

SPEC_FILE = "model.json"
WEIGHT_FILES = ("weights.safetensors", "weights.npz")
LANGUAGE_MODEL = "language_model"
DEFAULT_CONTEXT = 128
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
INSTALL_HINT = "pip install 'edge-certify[mlx]' (mlx[cpu] on Linux: plain mlx has no CPU library there)"


def _mx() -> Any:
    import mlx.core

    return mlx.core


def _nn() -> Any:
    import mlx.nn

    return mlx.nn


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
    return path.parent if path.name == SPEC_FILE else path


def read_spec(path: Path) -> MlxModelSpec:
    """Read and check ``model.json``; every problem is a ModelError naming the file and the key."""
    folder = model_folder(path)
    file = folder / SPEC_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelError(f"mlx: {file} does not exist", hint="an MLX model is a folder with model.json and "
                         "weights.safetensors; check the plan's path") from None
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
    if not isinstance(module, _nn().Module):
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
    _nn().quantize(module, group_size=group_size, bits=bits, mode=mode,
                   class_predicate=lambda path, _layer: path in wanted)


def parameter_arrays(module: Any) -> list[Any]:
    """The module's parameter arrays (quantized layers hold packed weights, scales and biases)."""
    from mlx.utils import tree_flatten

    return [leaf[1] for leaf in tree_flatten(module.parameters())]


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"mlx: the weights {weights} do not fit the model {spec.factory}: {first}",
                         hint="the weights were saved from another architecture, other kwargs or another "
                              "quantization; rebuild them, or fix model.json") from None
    module.eval()
    _mx().eval(module.parameters())
    return module, count


class MlxBackend:
    """Runs an ``mlx.nn`` model folder with MLX (see the module docstring for the folder and plan keys)."""

    name: ClassVar[str] = "mlx"
    # Results that stand for an Apple-silicon target even when measured on MLX's Linux CPU backend; speed does not.
    portable_gates: ClassVar[tuple[str, ...]] = ("accuracy", "memory")
    distributions: ClassVar[tuple[str, ...]] = ("mlx", "mlx-cpu", "mlx-metal")
    install_hint: ClassVar[str] = INSTALL_HINT
    hints: ClassVar[Mapping[str, str]] = {
        "accuracy": "quantize with more bits (8 or 6) or a smaller group_size (32), and keep sensitive layers "
                    "(embeddings, the output head) in float with nn.quantize's class_predicate",
        "speed": "off Apple silicon MLX runs on its CPU backend and is not representative of an Apple target; "
                 "certify on an M-series Mac with device = 'gpu'; quantized matmuls pay off on large layers",
        "memory": "quantize weights (4-bit group 64 stores about 0.15x of float32), save them in float16/bfloat16, "
                  "and keep options.n_ctx small for language models",
        "stability": "MLX evaluates lazily: warm up before timing, and remove background load",
    }

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.spec: MlxModelSpec | None = None
        self._module: Any = None
        self._float_params = 0
        self._window: list[int] = []
        self._last: np.ndarray | None = None
        self._n_ctx = 0

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import mlx.core
            import mlx.nn  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"mlx is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        mx = _mx()
        metal = bool(mx.metal.is_available())
        detail = f"mlx {mx.__version__}: cpu{', gpu (Metal)' if metal else ''}"
        if ref.device_class == "cpu":
            return True, detail
        if ref.device_class == "gpu":
            return metal, detail if metal else f"Metal is not available here ({detail}): MLX GPU needs Apple silicon"
        return False, f"MLX has no {ref.device_class.upper()} device; {detail}"

    # ----------------------------------------------------------------------- load

    def load(self) -> None:
        mx = _mx()
        ok, detail = self.available_devices(self.ref)
        if not ok:
            raise ModelError(f"mlx cannot run on {self.ref.device!r}: {detail}")
        mx.set_default_device(mx.gpu if self.ref.device_class == "gpu" else mx.cpu)
        self.spec = read_spec(self.ref.file)
        self._module, self._float_params = load_module(self.spec)
        n_ctx = self.ref.option("n_ctx", self.spec.context)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ModelError(f"options.n_ctx = {n_ctx!r} must be a positive integer")
        self._n_ctx = n_ctx

    @property
    def is_language_model(self) -> bool:
        return self.spec is not None and self.spec.kind == LANGUAGE_MODEL

    def input_specs(self) -> list[TensorSpec]:
        assert self.spec is not None
        if self.is_language_model:
            return [TensorSpec("tokens", ("batch", "sequence"), "int32")]
        return list(self.spec.inputs) or [TensorSpec("x", ("batch", None), "float32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Array model: the module's outputs as float32/int numpy arrays. Language model: ``[logits]``, float32
        ``[batch, n, vocab]``, each row from an empty context (this also restarts the ``decode_step`` context)."""
        if self.is_language_model:
            self._window, self._last = [], None
            return [self._logits(self._checked(feeds["tokens"]))]
        names = [s.name for s in self.input_specs()]
        args = [_mx().array(feeds[name]) for name in names]
        try:
            out = self._module(*args)
            outputs = list(out) if isinstance(out, (list, tuple)) else [out]
            _mx().eval(*outputs)
        except ValueError as exc:
            raise ModelError(f"mlx: the model rejected inputs {[tuple(a.shape) for a in args]}: {exc}",
                             hint="check the dataset's shape against model.json 'inputs'") from None
        return [_to_numpy(o) for o in outputs]

    def _logits(self, tokens: np.ndarray) -> np.ndarray:
        mx = _mx()
        logits = self._module(mx.array(tokens.astype(np.int32)))
        mx.eval(logits)
        return _to_numpy(logits)

    def decode_step(self, token: int) -> None:
        """Append one token and compute its next-token logits (``last_logits()``) by re-running the window (no
        KV cache); a full window (``n_ctx`` tokens) restarts from this token."""
        assert self.spec is not None
        if not 0 <= token < self.spec.vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self.spec.vocab - 1})")
        if len(self._window) >= self._n_ctx:
            self._window = []
        self._window.append(int(token))
        self._last = self._logits(np.array([self._window], dtype=np.int32))[0, -1]

    def last_logits(self) -> np.ndarray:
        """The next-token logits [vocab] of the last decoded position (a copy)."""
        if self._last is None:
            raise ModelError("no decode_step has run since the context (re)started")
        return np.array(self._last, dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        """Byte-level: one token per UTF-8 byte (no BOS)."""
        assert self.spec is not None
        tokens = list(text.encode("utf-8"))
        if tokens and max(tokens) >= self.spec.vocab:
            raise ModelError(f"byte {max(tokens)} of the text is outside the vocabulary (0..{self.spec.vocab - 1})",
                             hint="a byte-level tokenizer needs vocab >= 256 for arbitrary text")
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", "replace")

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        assert self.spec is not None
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ModelError(f"tokens must be [batch, n] with n >= 1, got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self._n_ctx:
            raise ModelError(f"the prompt has {tokens.shape[1]} tokens but the context holds n_ctx = {self._n_ctx}",
                             hint="use shorter prompts (dataset.context) or a model with a longer context")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.spec.vocab:
            raise ModelError(f"token ids must lie in 0..{self.spec.vocab - 1} (the vocabulary), got {low}..{high}",
                             hint="tokenize the text with this model's tokenizer")
        return tokens

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        return str(_mx().default_device().type.name)

    def info(self) -> dict[str, Any]:
        mx, spec = _mx(), self.spec
        assert spec is not None
        leaves = parameter_arrays(self._module)
        device = self.executed_device()
        return {
            "framework": "mlx", "version": mx.__version__, "device": device,
            "metal_available": bool(mx.metal.is_available()),
            "representative_for": ["apple"] if device == "gpu" else ["cpu"],
            "note": "" if device == "gpu" else "MLX CPU backend: speed is not Apple silicon speed",
            "kind": spec.kind, "factory": spec.factory, "kwargs": spec.kwargs, "weights": spec.weights.name,
            "weight_dtypes": sorted({str(v.dtype).removeprefix("mlx.core.") for v in leaves}),
            "parameter_count": self._float_params,
            "stored_bytes": sum(int(v.nbytes) for v in leaves),
            "quantization": {k: v for k, v in spec.quantization.items() if k != "layers"} or None,
            "quantized_layers": len(spec.quantization.get("layers", [])),
            **({"vocab": spec.vocab, "tokenizer": spec.tokenizer, "n_ctx": self._n_ctx,
                "kv_cache": False} if self.is_language_model else {}),
        }

    def close(self) -> None:
        self._module = None
        self._window, self._last = [], None


def _to_numpy(array: Any) -> np.ndarray:
    mx = _mx()
    if array.dtype in (mx.float16, mx.bfloat16):
        array = array.astype(mx.float32)
    return np.array(array)
