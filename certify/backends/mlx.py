"""MLX backend (``mlx``): an ``mlx.nn`` model folder or an ``mlx-lm`` model folder, run as an array model or a
``LanguageModel``. The plan's ``path`` is the folder (a path to its ``model.json`` or ``config.json`` works too).

**mlx.nn folder** (it has ``model.json``):

- ``model.json``: ``{"factory": "package.module:function", "kwargs": {...}}``. The factory builds the
  ``mlx.nn.Module`` (importing it runs that package's code: pin the folder's digest in the plan). Optional keys:
  ``"inputs"``: ``[{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]`` for an array model (default: one
  float32 input ``x`` of shape ``[batch, ?]``); ``"kind": "language_model"`` with ``"vocab"`` (required),
  ``"tokenizer": "bytes"`` (token id = UTF-8 byte, so ``vocab`` must be >= 256 for arbitrary text) and
  ``"context"`` (default 128); ``"quantization": {"bits", "group_size", "mode", "layers"}`` written by the
  ``mlx quantize`` recipe: ``nn.quantize`` is re-applied to exactly those layers before the weights load.
- ``weights.safetensors`` (or ``weights.npz``), as ``nn.Module.save_weights`` writes it; loaded strictly (a
  missing, extra or mis-shaped parameter is a ModelError).

Its language model maps int tokens ``[B, n]`` to logits ``[B, n, vocab]`` and has no KV cache: ``decode_step``
re-runs the growing window (at most ``options.n_ctx`` tokens, default the model's ``context``), so generation is
O(n) per token, a conservative figure for a deployment that caches keys and values.

**mlx-lm folder** (``config.json`` and no ``model.json``), as ``mlx_lm.convert`` writes it: ``config.json`` with
``model_type`` (an architecture of ``mlx_lm.models``, e.g. ``llama``), ``model*.safetensors`` and optionally the
tokenizer (``tokenizer.json`` / ``tokenizer.model`` + ``tokenizer_config.json``). It is loaded by mlx-lm's own
``mlx_lm.utils.load_model`` (a ``"quantization": {"group_size", "bits"}`` in the config is re-applied by it; a
config that asks for custom model code, ``model_file``, is refused). It is always a language model, run as an
mlx-lm deployment runs it: ``prefill`` and ``decode_step`` go through mlx-lm's KV cache
(``mlx_lm.models.cache.make_prompt_cache``), so a generation step costs O(1) in the context length, while
``infer`` evaluates full sequences without a cache. ``options.n_ctx`` (default the config's
``max_position_embeddings``) bounds the context: a longer prompt is a ModelError and a full decode context
restarts. The tokenizer is loaded (``mlx_lm.utils.load_tokenizer``, from the folder only) the first time text is
tokenized, so it never counts in the model's memory; a folder without one cannot tokenize text (a ModelError
naming the files to add), but runs token datasets. ``mlx_lm`` is imported by ``prepare`` for these folders only,
before the model's memory is measured: it imports ``transformers`` (and with it ``torch`` where torch is
installed). The folder formats themselves are read in ``certify.backends.mlx_folders``.

**Language models** (both kinds) implement ``prefill(prompt)``: the prompt from an empty context, only its last
position's next-token logits kept (``last_logits()``), the greedy next token returned (time to first token); the
``decode_step`` context then continues after the prompt. Correctness comes first: the logits of ``decode_step``
and ``prefill`` equal those ``infer`` gives at the same positions.

Devices: ``cpu`` always (on Linux this is the MLX CPU backend of ``mlx[cpu]``); ``gpu`` only where Metal is
available (Apple silicon). Speed measured off Apple silicon is the MLX CPU backend's and not representative of
an ``apple`` target: ``info()["representative_for"]`` says which device class the numbers stand for. MLX has no
setting for its CPU threads, so the plan's ``threads`` is recorded as requested but not applied.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec, checked_tokens
from certify.backends.mlx_folders import (
    DEFAULT_CONTEXT,
    LANGUAGE_MODEL,
    MLX_LM,
    MLX_LM_WEIGHTS,
    PREFILL_STEP,
    THREADS,
    TOKENIZER_FILES,
    MlxModelSpec,
    first_line,
    is_mlx_lm_folder,
    load_mlx_lm,
    load_module,
    mlx_core,
    mlx_lm_module,
    mlx_lm_version,
    mlx_lm_vocab,
    model_folder,
    parameter_arrays,
    quantization_of,
    quantized_layer_count,
    read_spec,
)
from certify.backends.special import added_specials
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef


class MlxBackend:
    """Runs an ``mlx.nn`` or ``mlx-lm`` model folder with MLX (see the module docstring for the folders and keys)."""

    name: ClassVar[str] = "mlx"
    # Results that stand for an Apple-silicon target even when measured on MLX's Linux CPU backend; speed does not.
    portable_gates: ClassVar[tuple[str, ...]] = ("accuracy", "memory")
    distributions: ClassVar[tuple[str, ...]] = ("mlx", "mlx-cpu", "mlx-metal", "mlx-lm")
    install_hint: ClassVar[str] = install_hint("mlx")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "an MLX model serves one request at a time here (clients take turns): batch concurrent requests "
                  "instead",
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
        self.spec: MlxModelSpec | None = None  # an mlx.nn folder's
        self.config: dict[str, Any] | None = None  # an mlx-lm folder's
        self.folder = Path()
        self._module: Any = None
        self._float_params = 0
        self._vocab = 0
        self._n_ctx = 0
        self._window: list[int] = []  # mlx.nn: the running decode context
        self._cache: list[Any] | None = None  # mlx-lm: the running KV cache
        self._position = 0  # mlx-lm: tokens in the KV cache
        self._last: np.ndarray | None = None
        self._tokenizer: Any = None

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import mlx.core
            import mlx.nn  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"mlx is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def prepare(cls, ref: ModelRef) -> None:
        """Import what this model needs beyond MLX, before the worker notes its footprint (the framework is not the
        model's memory): mlx-lm (and with it transformers, ~240 MB) for an mlx-lm folder only. If that import
        fails, ``load`` reports it."""
        if ref.path is not None and is_mlx_lm_folder(ref.path) and importlib.util.find_spec("mlx_lm") is not None:
            with contextlib.suppress(Exception):
                import mlx_lm.utils  # noqa: F401

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        mx = mlx_core()
        metal = bool(mx.metal.is_available())
        detail = f"mlx {mx.__version__}: cpu{', gpu (Metal)' if metal else ''}"
        if ref.device_class == "cpu":
            return True, detail
        if ref.device_class == "gpu":
            return metal, detail if metal else f"Metal is not available here ({detail}): MLX GPU needs Apple silicon"
        return False, f"MLX has no {ref.device_class.upper()} device; {detail}"

    # ----------------------------------------------------------------------- load

    def load(self) -> None:
        mx = mlx_core()
        ok, detail = self.available_devices(self.ref)
        if not ok:
            raise ModelError(f"mlx cannot run on {self.ref.device!r}: {detail}")
        mx.set_default_device(mx.gpu if self.ref.device_class == "gpu" else mx.cpu)
        self.folder = model_folder(self.ref.file)
        if is_mlx_lm_folder(self.folder):
            self._module, self.config = load_mlx_lm(self.folder)
            self._float_params = int(mlx_lm_module("utils").get_total_parameters(self._module))
            self._vocab = mlx_lm_vocab(self.folder, self._module, self.config)
            context = self.config.get("max_position_embeddings") or DEFAULT_CONTEXT
        else:
            self.spec = read_spec(self.ref.file)
            self._module, self._float_params = load_module(self.spec)
            self._vocab, context = self.spec.vocab, self.spec.context
        n_ctx = self.ref.option("n_ctx", context)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ModelError(f"options.n_ctx = {n_ctx!r} must be a positive integer")
        self._n_ctx = n_ctx

    @property
    def kind(self) -> str:
        return MLX_LM if self.config is not None else self.spec.kind if self.spec is not None else ""

    @property
    def is_language_model(self) -> bool:
        return self.kind in (LANGUAGE_MODEL, MLX_LM)

    def input_specs(self) -> list[TensorSpec]:
        if self.is_language_model:
            return [TensorSpec("tokens", ("batch", "sequence"), "int32")]
        assert self.spec is not None
        return list(self.spec.inputs) or [TensorSpec("x", ("batch", None), "float32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Array model: the module's outputs as float32/int numpy arrays. Language model: ``[logits]``, float32
        ``[batch, n, vocab]``, each row from an empty context, without a KV cache (this also restarts the
        ``decode_step`` context)."""
        if self.is_language_model:
            self._restart()
            return [self._logits(self._checked(feeds["tokens"]))]
        names = [s.name for s in self.input_specs()]
        args = [mlx_core().array(feeds[name]) for name in names]
        try:
            out = self._module(*args)
            outputs = list(out) if isinstance(out, (list, tuple)) else [out]
            mlx_core().eval(*outputs)
        except ValueError as exc:
            raise ModelError(f"mlx: the model rejected inputs {[tuple(a.shape) for a in args]}: {exc}",
                             hint="check the dataset's shape against model.json 'inputs'") from None
        return [_to_numpy(o) for o in outputs]

    def _logits(self, tokens: np.ndarray) -> np.ndarray:
        mx = mlx_core()
        logits = self._module(mx.array(tokens.astype(np.int32)))
        mx.eval(logits)
        return _to_numpy(logits)

    def prefill(self, tokens: np.ndarray) -> int:
        """Process a 1-D prompt from an empty context and return its greedy next token (time to first token);
        only the last position's logits are kept (``last_logits()``) and ``decode_step`` continues after it."""
        prompt = np.asarray(tokens)
        if prompt.ndim != 1:
            raise ModelError(f"prefill takes a 1-D prompt, got shape {tuple(prompt.shape)}")
        checked = self._checked(prompt.astype(np.int32)[None])
        self._restart()
        if self.config is not None:
            self._cache = self._new_cache()
            last = self._cached_logits(checked)
        else:
            last = self._module(mlx_core().array(checked))[0, -1]
            self._window = [int(t) for t in checked[0]]
        mlx_core().eval(last)
        self._last = _to_numpy(last)
        return int(np.argmax(self._last))

    def decode_step(self, token: int) -> None:
        """Append one token and compute its next-token logits (``last_logits()``): through the KV cache (mlx-lm)
        or by re-running the window (mlx.nn); a full context (``n_ctx`` tokens) restarts from this token."""
        if not 0 <= token < self._vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self._vocab - 1})")
        if self.config is not None:
            if self._cache is None or self._position >= self._n_ctx:
                self._cache, self._position = self._new_cache(), 0
            last = self._cached_logits(np.array([[token]], dtype=np.int32))
            mlx_core().eval(last)
            self._last = _to_numpy(last)
            return
        if len(self._window) >= self._n_ctx:
            self._window = []
        self._window.append(int(token))
        self._last = self._logits(np.array([self._window], dtype=np.int32))[0, -1]

    def _new_cache(self) -> list[Any]:
        return list(mlx_lm_module("models.cache").make_prompt_cache(self._module))

    def _cached_logits(self, tokens: np.ndarray) -> Any:
        """Run ``tokens`` [1, n] through the KV cache, as mlx-lm's generate does: all but the last in steps whose
        logits are never evaluated (only the cache is), then the last; its next-token logits (lazy)."""
        mx = mlx_core()
        head = tokens[:, :-1]
        for start in range(0, head.shape[1], PREFILL_STEP):
            self._module(mx.array(head[:, start:start + PREFILL_STEP]), cache=self._cache)
            mx.eval([c.state for c in self._cache or []])
        self._position += tokens.shape[1]
        return self._module(mx.array(tokens[:, -1:]), cache=self._cache)[0, -1]

    def _restart(self) -> None:
        self._window, self._cache, self._position, self._last = [], None, 0, None

    def last_logits(self) -> np.ndarray:
        """The next-token logits [vocab] of the last decoded position (a copy)."""
        if self._last is None:
            raise ModelError("no decode_step or prefill has run since the context (re)started")
        return np.array(self._last, dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        """mlx.nn: byte-level, one token per UTF-8 byte. mlx-lm: the folder's tokenizer. No BOS either way."""
        if self.config is not None:
            return [int(t) for t in self._lm_tokenizer().encode(text, add_special_tokens=False)]
        tokens = list(text.encode("utf-8"))
        if tokens and max(tokens) >= self._vocab:
            raise ModelError(f"byte {max(tokens)} of the text is outside the vocabulary (0..{self._vocab - 1})",
                             hint="a byte-level tokenizer needs vocab >= 256 for arbitrary text")
        return tokens

    def special_tokens(self) -> dict[str, Any]:
        """mlx-lm: BOS/EOS as the folder's tokenizer adds them (``add_special_tokens``, from tokenizer_config.json),
        found by encoding one word both ways. mlx.nn byte-level: none."""
        if self.config is None:
            return {"add_bos": False, "bos": None, "add_eos": False, "eos": None, "source": "byte-level tokenizer"}
        tok = self._lm_tokenizer()
        return added_specials(lambda text, special: tok.encode(text, add_special_tokens=special),
                              "the folder's tokenizer (add_special_tokens)")

    def detokenize(self, tokens: list[int]) -> str:
        if self.config is not None:
            return str(self._lm_tokenizer().decode([int(t) for t in tokens]))
        return bytes(int(t) for t in tokens).decode("utf-8", "replace")

    def _lm_tokenizer(self) -> Any:
        """The mlx-lm folder's tokenizer, loaded from the folder on first use (never from the hub)."""
        if self._tokenizer is None:
            if not any((self.folder / name).is_file() for name in TOKENIZER_FILES):
                raise ModelError(f"mlx: the mlx-lm folder {self.folder} has no tokenizer, so it cannot tokenize "
                                 f"text (looked for {', '.join(TOKENIZER_FILES)})",
                                 hint="copy the tokenizer files (tokenizer.json and tokenizer_config.json) of the "
                                      "model it was converted from into the folder, or use a token dataset")
            try:
                self._tokenizer = mlx_lm_module("utils").load_tokenizer(self.folder)
            except Exception as exc:
                raise ModelError(f"mlx: the tokenizer in {self.folder} does not load: {first_line(exc)}",
                                 hint="check tokenizer.json / tokenizer_config.json (transformers loads them)"
                                 ) from None
        return self._tokenizer

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        return checked_tokens(tokens, self._n_ctx, self._vocab,
                              "a model with a longer context")

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        return str(mlx_core().default_device().type.name)

    def info(self) -> dict[str, Any]:
        mx = mlx_core()
        leaves = parameter_arrays(self._module)
        device = self.executed_device()
        return {
            "framework": "mlx", "version": mx.__version__, "device": device,
            "metal_available": bool(mx.metal.is_available()),
            "representative_for": ["apple"] if device == "gpu" else ["cpu"],
            "note": "" if device == "gpu" else "MLX CPU backend: speed is not Apple silicon speed",
            "threads": THREADS, "threads_requested": self.ref.threads or None,
            "kind": self.kind,
            "weight_dtypes": sorted({str(v.dtype).removeprefix("mlx.core.") for v in leaves}),
            "parameter_count": self._float_params,
            "stored_bytes": sum(int(v.nbytes) for v in leaves),
            **(self._mlx_lm_info() if self.config is not None else self._spec_info()),
            **({"vocab": self._vocab, "n_ctx": self._n_ctx,
                "kv_cache": self.config is not None} if self.is_language_model else {}),
        }

    def _spec_info(self) -> dict[str, Any]:
        spec = self.spec
        assert spec is not None
        return {
            "factory": spec.factory, "kwargs": spec.kwargs, "weights": spec.weights.name,
            "quantization": {k: v for k, v in spec.quantization.items() if k != "layers"} or None,
            "quantized_layers": len(spec.quantization.get("layers", [])),
            **({"tokenizer": spec.tokenizer} if self.is_language_model else {}),
        }

    def _mlx_lm_info(self) -> dict[str, Any]:
        config = self.config
        assert config is not None
        found = [name for name in TOKENIZER_FILES if (self.folder / name).is_file()]
        return {
            "mlx_lm_version": mlx_lm_version(), "model_type": config.get("model_type"),
            "weights": sorted(f.name for f in self.folder.glob(MLX_LM_WEIGHTS)),
            "quantization": quantization_of(config), "quantized_layers": quantized_layer_count(self._module),
            "n_params": self._float_params, "tokenizer": found[0] if found else None,
        }

    def close(self) -> None:
        self._module = None
        self._restart()
        self._tokenizer = None


def _to_numpy(array: Any) -> np.ndarray:
    mx = mlx_core()
    if array.dtype in (mx.float16, mx.bfloat16):
        array = array.astype(mx.float32)
    return np.array(array)
