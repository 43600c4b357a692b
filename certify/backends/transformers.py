"""Hugging Face ``transformers`` backend: a causal language model folder run with PyTorch, as a ``LanguageModel``.

This is the model **before** optimization, the baseline a plan compares its GGUF, ONNX Runtime GenAI, OpenVINO and
MLX versions against. The plan's ``path`` is the folder ``save_pretrained`` writes (``config.json``, the weights
as ``*.safetensors``, the tokenizer files); a path to its ``config.json`` works too. It is loaded with
``AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False)``: never from a
hub, never the folder's own Python code (a config with ``auto_map`` is refused before anything is loaded).

Plan keys: ``threads`` (torch's intra-op threads; 0 leaves torch's default), ``device`` (``cpu``; ``gpu`` is CUDA
where torch has it, else Metal (MPS) on Apple silicon) and ``options``:

- ``dtype`` (default ``float32``; ``bfloat16``, ``float16``): the weights' and compute type, as a deployment of
  the original model would choose it;
- ``n_ctx`` (default the config's ``max_position_embeddings``): the longest context; a longer prompt is a
  ModelError, never a truncation, and a full decode context restarts.

``infer`` evaluates whole sequences without a cache; ``prefill`` and ``decode_step`` use transformers' own KV
cache (``DynamicCache``) with only the last position's logits computed (``logits_to_keep=1``), as generation
does. The tokenizer (``AutoTokenizer``, from the folder only) is loaded the first time text is tokenized, so it
never counts in the model's memory; torch and transformers are imported by ``prepare``, before the worker notes
its footprint.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec, checked_tokens
from certify.backends.special import added_specials
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

DTYPES = ("float32", "bfloat16", "float16")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _torch() -> Any:
    import torch

    return torch


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def model_folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json``, checked: present, JSON, a ``model_type``, and no custom code."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"transformers: {folder} has no config.json, so it is not a Hugging Face model folder",
                         hint="name the folder save_pretrained wrote (config.json, *.safetensors, tokenizer files)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"transformers: {config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"transformers: {config_file} names no model_type", hint="save the model with save_pretrained")
    if config.get("auto_map"):
        raise ModelError(f"transformers: {config_file} asks for custom model code (auto_map): the harness never runs "
                         "a model folder's Python code", hint="convert the model to an architecture transformers "
                                                              "ships, or certify it with another framework")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"transformers: {folder} holds no weights (looked for {', '.join(WEIGHT_FILES)})",
                         hint="save the model with save_pretrained(folder)")
    return config


class TransformersBackend:
    """Runs a Hugging Face causal LM folder with transformers on torch (see the module docstring)."""

    name: ClassVar[str] = "transformers"
    distributions: ClassVar[tuple[str, ...]] = ("transformers", "torch", "tokenizers", "safetensors")
    install_hint: ClassVar[str] = install_hint("transformers")
    hints: ClassVar[Mapping[str, str]] = {
        "speed": "the original model in PyTorch is the reference, not a deployment: certify the optimized versions "
                 "(GGUF, ONNX Runtime GenAI, OpenVINO, MLX) against it; set threads to the physical cores",
        "memory": "options.dtype = 'bfloat16' halves the weights; a smaller options.n_ctx bounds the KV cache",
        "accuracy": "the baseline is the reference: a failing transformers candidate was saved or converted "
                    "differently (dtype, tokenizer files)",
        "stress": "one torch model serves one request at a time here (clients take turns)",
        "stability": "torch's intra-op threads compete with other work: leave a core free and remove background load",
    }

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.folder = Path()
        self.config: dict[str, Any] = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: Any = None
        self._position = 0
        self._n_ctx = 0
        self._vocab = 0
        self._last: np.ndarray | None = None

    @classmethod
    def import_runtime(cls) -> None:
        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                raise BackendUnavailable(f"{module} is not installed", hint=cls.install_hint)

    @classmethod
    def prepare(cls, ref: ModelRef) -> None:
        """Import torch and transformers' model classes before the worker notes its footprint (~400 MB of
        framework is not the model's memory); a failure here is reported by ``load``."""
        try:
            import transformers  # noqa: F401
            from transformers import AutoModelForCausalLM  # noqa: F401
        except Exception:
            return

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        torch = _torch()
        cuda = bool(torch.cuda.is_available())
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        detail = f"torch {torch.__version__}: cpu" + (", cuda" if cuda else "") + (", mps" if mps else "")
        if ref.device_class == "cpu":
            return True, detail
        if ref.device_class == "gpu":
            return cuda or mps, detail if cuda or mps else f"torch sees no GPU here ({detail})"
        return False, f"transformers on torch has no {ref.device_class.upper()} device here; {detail}"

    # ----------------------------------------------------------------------- load

    def settings(self) -> dict[str, Any]:
        dtype = str(self.ref.option("dtype", "float32"))
        if dtype not in DTYPES:
            raise ModelError(f"options.dtype = {dtype!r} is not one of {', '.join(DTYPES)}")
        n_ctx = self.ref.option("n_ctx", 0)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ModelError(f"options.n_ctx = {n_ctx!r} must be a positive integer")
        return {"dtype": dtype, "n_ctx": n_ctx}

    def load(self) -> None:
        torch = _torch()
        settings = self.settings()
        ok, detail = self.available_devices(self.ref)
        if not ok:
            raise ModelError(f"transformers cannot run on {self.ref.device!r}: {detail}")
        self.folder = model_folder(self.ref.file)
        self.config = read_config(self.folder)
        if self.ref.threads:
            torch.set_num_threads(int(self.ref.threads))
        try:
            from transformers import AutoModelForCausalLM

            model: Any = AutoModelForCausalLM.from_pretrained(
                str(self.folder), local_files_only=True, trust_remote_code=False,
                dtype=getattr(torch, settings["dtype"]))
        except Exception as exc:
            raise ModelError(f"transformers could not load {self.folder}: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                             hint="check the folder is complete (config.json, weights) and that this transformers "
                                  "version knows its model_type") from None
        self._model = model.to(self._torch_device()).eval()
        self._vocab = int(model.config.vocab_size)
        limit = int(self.config.get("max_position_embeddings") or 2048)
        self._n_ctx = min(settings["n_ctx"], limit) if settings["n_ctx"] else limit

    def _torch_device(self) -> str:
        if self.ref.device_class != "gpu":
            return "cpu"
        return "cuda" if _torch().cuda.is_available() else "mps"

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("tokens", ("batch", "sequence"), "int32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Logits float32 [batch, n, vocab], every row from an empty context (no cache); ends the decode context."""
        tokens = self._checked(np.asarray(feeds["tokens"]))
        with _torch().inference_mode():
            logits = self._model(input_ids=self._ids(tokens), use_cache=False).logits
        self._cache, self._position = None, 0
        return [logits.float().cpu().numpy()]

    def prefill(self, tokens: np.ndarray) -> int:
        """The prompt from an empty KV cache, only its last position's logits computed; the greedy next token."""
        prompt = np.asarray(tokens)
        if prompt.ndim != 1:
            raise ModelError(f"prefill takes a 1-D prompt, got shape {tuple(prompt.shape)}")
        checked = self._checked(prompt[None])
        self._cache, self._position = self._new_cache(), 0
        self._step(checked)
        assert self._last is not None
        return int(np.argmax(self._last))

    def decode_step(self, token: int) -> None:
        """Append one token through the KV cache; a full context (``n_ctx``) restarts from this token."""
        if not 0 <= token < self._vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self._vocab - 1})")
        if self._cache is None or self._position >= self._n_ctx:
            self._cache, self._position = self._new_cache(), 0
        self._step(np.array([[token]], dtype=np.int64))

    def last_logits(self) -> np.ndarray:
        if self._last is None:
            raise ModelError("no decode_step or prefill has run since the context (re)started")
        return np.array(self._last, dtype=np.float32)

    def _step(self, tokens: np.ndarray) -> None:
        with _torch().inference_mode():
            out = self._model(input_ids=self._ids(tokens), past_key_values=self._cache, use_cache=True,
                              logits_to_keep=1)
        self._cache = out.past_key_values
        self._position += tokens.shape[1]
        self._last = out.logits[0, -1].float().cpu().numpy()

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _ids(self, tokens: np.ndarray) -> Any:
        return _torch().from_numpy(tokens.astype(np.int64)).to(self._model.device)

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        return checked_tokens(tokens, self._n_ctx, self._vocab,
                              "raise options.n_ctx to at least {n} (up to the model's max_position_embeddings)")

    # ----------------------------------------------------------------------- tokenizer

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._hf_tokenizer().encode(text, add_special_tokens=False)]

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._hf_tokenizer().decode([int(t) for t in tokens]))

    def special_tokens(self) -> dict[str, Any]:
        """BOS/EOS as the folder's tokenizer adds them (tokenizer_config.json's add_bos_token / add_eos_token or
        the tokenizer's post-processor), found by encoding one word both ways."""
        tokenizer = self._hf_tokenizer()
        return added_specials(lambda text, special: tokenizer.encode(text, add_special_tokens=special),
                              "the folder's tokenizer (transformers AutoTokenizer, add_special_tokens)")

    def _hf_tokenizer(self) -> Any:
        if self._tokenizer is None:
            if not any((self.folder / name).is_file() for name in TOKENIZER_FILES):
                raise ModelError(f"transformers: {self.folder} has no tokenizer (looked for "
                                 f"{', '.join(TOKENIZER_FILES)})", hint="save the tokenizer into the model folder "
                                                                        "(tokenizer.save_pretrained(folder))")
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True,
                                                                trust_remote_code=False)
            except Exception as exc:
                raise ModelError(f"transformers could not load the tokenizer of {self.folder}: "
                                 f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None
        return self._tokenizer

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        return str(self._model.device) if self._model is not None else "not loaded"

    def info(self) -> dict[str, Any]:
        torch = _torch()
        model = self._model
        return {
            "framework": "transformers", "version": _version("transformers"), "torch": torch.__version__,
            "device": self.executed_device(), "dtype": str(model.dtype).removeprefix("torch."),
            "threads": int(torch.get_num_threads()), "threads_requested": self.ref.threads or None,
            "architecture": self.config.get("architectures", [self.config.get("model_type")]),
            "model_type": self.config.get("model_type"), "n_params": int(sum(p.numel() for p in model.parameters())),
            "n_vocab": self._vocab, "n_ctx": self._n_ctx, "kv_cache": "transformers DynamicCache",
        }

    def close(self) -> None:
        self._model = self._cache = self._tokenizer = None
