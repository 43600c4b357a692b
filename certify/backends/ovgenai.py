"""OpenVINO GenAI backend: an OpenVINO LLM folder as ``optimum-cli export openvino --task text-generation-with-past``
writes it, run as a ``LanguageModel``. The plan's ``path`` is the folder (or its ``openvino_model.xml``), holding
``openvino_model.xml``/``.bin`` (a *stateful* model: inputs ``input_ids``, ``attention_mask``, ``position_ids``
[batch, seq] int64 and ``beam_idx`` [batch] int32, output ``logits`` [batch, seq, vocab], the KV cache in the infer
request's state), ``openvino_tokenizer.xml``/``openvino_detokenizer.xml`` (openvino-tokenizers) and ``config.json``.

What runs, honestly: text is tokenized by ``openvino_genai.Tokenizer`` (openvino-tokenizers' IRs, as LLMPipeline
tokenizes), but the model is **not** run by ``openvino_genai.LLMPipeline``, which exposes no logits (fidelity needs
them). The OpenVINO runtime's stateful infer request runs it the way LLMPipeline drives it internally: ``infer``
evaluates each row after ``reset_state()`` in one call (attention_mask ones, position_ids 0..n-1, beam_idx 0),
``prefill`` does the same for a prompt, ``decode_step`` appends one token to the KV cache (attention_mask ones of
length pos+1, position_ids [[pos]]). Like LLMPipeline, prefill and decode compute the output head for the last
position only: the hidden states are sliced before the logits MatMul (LLMPipeline slices with a constant; here the
start is one more model input, ``certify_logits_from``: 0 for ``infer``, -1 otherwise). LLMPipeline's sampling,
stop criteria and chat templates are not run. One request holds one context: calls must not overlap.

Plan keys: ``device``, ``threads`` and ``options.performance_hint``/``num_streams``/``cache_dir``/``config`` as for
framework ``openvino`` (whose reading of them is reused; ``config`` wins over the keys below), and ``options``:

- ``precision`` (``f32``, ``bf16``, ``f16``; default: the device's choice): INFERENCE_PRECISION_HINT. The CPU
  plugin runs an FP32 IR in bf16 where the CPU has AVX512-BF16/AMX: set ``f32`` to certify the FP32 numbers.
- ``kv_cache_precision`` (``f32``, ``f16``, ``bf16``, ``u8``, ``u4``; default: the IR's ``runtime_options`` or the
  device's, u8 on recent x86 CPUs): KV_CACHE_PRECISION.
- ``n_ctx`` (default config.json's ``max_position_embeddings``): a longer prompt is a ModelError; a full decode
  context restarts.

``info()`` records what the compiled model reports in force (precision, KV cache precision, dynamic quantization
group, threads, EXECUTION_DEVICES) and the IR's weight compression (nncf's rt_info record, the element types of
its weight constants).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec, checked_tokens
from certify.backends.openvino import (
    READ_BACK,
    OpenVinoBackend,
    first_cause,
    ov_core,
    ov_device,
    ov_module,
    plain_value,
    precision_key,
)
from certify.backends.special import added_specials
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

MODEL_XML = "openvino_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
EXPORT_HINT = "export the model with optimum-cli export openvino --task text-generation-with-past (stateful)"
TOKENIZER_HINT = ("convert the tokenizer with openvino-tokenizers' convert_tokenizer (optimum-cli export openvino "
                  "writes it when openvino-tokenizers is installed)")
DEFAULT_N_CTX = 2048
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
KV_CACHE_PRECISIONS = ("f32", "f16", "bf16", "u8", "u4")
LLM_READ_BACK = (*READ_BACK, "KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION",
                 "DYNAMIC_QUANTIZATION_GROUP_SIZE")
REQUIRED_INPUTS = ("input_ids", "attention_mask", "beam_idx")
LOGITS_FROM = "certify_logits_from"
DISTRIBUTIONS = ("openvino", "openvino-genai", "openvino-tokenizers")


def _genai() -> Any:
    """The openvino_genai module, imported on first use (never at import time of this module)."""
    import openvino_genai

    return openvino_genai


def model_folder(path: Path) -> Path:
    """The model folder of a plan's path: the folder itself, or the folder of its ``openvino_model.xml``."""
    return path.parent if path.suffix == ".xml" else path


def check_folder(folder: Path) -> None:
    """A ModelError naming the first file an OpenVINO GenAI folder lacks, and how to make it."""
    needs = ((MODEL_XML, EXPORT_HINT), (Path(MODEL_XML).with_suffix(".bin").name, EXPORT_HINT),
             (TOKENIZER_XML, TOKENIZER_HINT))
    for name, hint in needs:
        if not (folder / name).is_file():
            raise ModelError(f"OpenVINO GenAI: {folder} has no {name}", hint=hint)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json (the Hugging Face config the export keeps), {} when absent."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"OpenVINO GenAI: {path} is not valid JSON: {exc}", hint=EXPORT_HINT) from None
    return config if isinstance(config, dict) else {}


def check_stateful(model: Any, path: Path) -> set[str]:
    """The model's input names, once it is known to be the stateful LLM this backend runs."""
    names = {str(n) for port in model.inputs for n in port.get_names()}
    if any(n.startswith("past_key_values") for n in names) or not model.get_sinks():
        kv = "model inputs" if any(n.startswith("past_key_values") for n in names) else "missing"
        raise ModelError(f"OpenVINO GenAI: {path} is not a stateful LLM (its KV cache is {kv})",
                         hint=f"{EXPORT_HINT}, without --disable-stateful")
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    if missing or "logits" not in {str(n) for port in model.outputs for n in port.get_names()}:
        raise ModelError(f"OpenVINO GenAI: {path} lacks input(s) {missing or ''} or output 'logits' of a causal LM "
                         f"(inputs: {sorted(names)})", hint=EXPORT_HINT)
    return names


def slice_logits(model: Any) -> bool:
    """Slice the hidden states before the logits MatMul from a new input ``certify_logits_from`` (as LLMPipeline
    slices them to the last position); False, model unchanged, where the head is not a MatMul on [batch, seq, h]."""
    import openvino.opset13 as ops

    head = model.output("logits").get_node().input_value(0).get_node()
    for _ in range(3):  # Result <- [Convert/Add/Multiply/Tanh...] <- MatMul
        if head.get_type_name() == "MatMul" or head.get_input_size() == 0:
            break
        head = head.input_value(0).get_node()
    hidden = head.input_value(0)
    if head.get_type_name() != "MatMul" or hidden.get_partial_shape().rank.get_length() != 3:
        return False
    start = ops.parameter([1], ov_module().Type.i64, name=LOGITS_FROM)
    start.output(0).set_names({LOGITS_FROM})
    end, one = ops.constant(np.array([np.iinfo(np.int64).max])), ops.constant(np.array([1]))
    head.input(0).replace_source_output(ops.slice(hidden, start, end, one, one).output(0))
    model.add_parameters([start])
    model.validate_nodes_and_infer_types()
    return True


def weight_compression(model: Any) -> dict[str, Any]:
    """What the IR says of its weights: nncf's weight_compression record in its rt_info (mode, group size, ratio,
    ...; None for uncompressed weights) and the element types of its weight constants (rank >= 2), counted."""
    nncf: dict[str, Any] = {}
    if model.has_rt_info(["nncf", "weight_compression"]):
        record = model.get_rt_info()["nncf"]["weight_compression"]
        nncf = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in record.items()
                if k != "advanced_parameters"}
    types = Counter(str(op.get_output_element_type(0).get_type_name()) for op in model.get_ops()
                    if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2)
    return {"nncf": nncf or None, "weight_constants": dict(sorted(types.items()))}


def read_back(compiled: Any) -> dict[str, dict[str, Any]]:
    """The settings in force per executing device (virtual devices report theirs through DEVICE_PROPERTIES)."""
    supported = compiled.get_property("SUPPORTED_PROPERTIES")
    if "DEVICE_PROPERTIES" in supported:
        return {str(dev): {k: plain_value(v) for k, v in props.items() if k in LLM_READ_BACK}
                for dev, props in compiled.get_property("DEVICE_PROPERTIES").items()}
    device = ",".join(str(d) for d in compiled.get_property("EXECUTION_DEVICES"))
    return {device: {k: plain_value(compiled.get_property(k)) for k in LLM_READ_BACK if k in supported}}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "missing"


class OpenVinoGenAiBackend:
    """Runs an OpenVINO LLM folder with a stateful infer request (see the module docstring for folder and keys)."""

    name: ClassVar[str] = "ovgenai"
    distributions: ClassVar[tuple[str, ...]] = DISTRIBUTIONS
    install_hint: ClassVar[str] = install_hint("ovgenai")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "one stateful infer request serves one request at a time (clients take turns): serve concurrent "
                  "clients with LLMPipeline's continuous batching (a SchedulerConfig) instead",
        "accuracy": "compress weights less aggressively (INT8, or INT4 with --ratio < 1 and a smaller --group-size, "
                    "data-aware with --awq / --scale-estimation and a --dataset), and compare with options.precision "
                    "= 'f32' and kv_cache_precision = 'f32' to rule out BF16 execution and a u8/f16 KV cache",
        "speed": "compress weights (INT4/INT8 weights are decompressed on the fly and cut memory bandwidth), set "
                 "threads to the physical cores, keep options.precision at the device's default (bf16 on AMX/AVX512 "
                 "CPUs) and check EXECUTION_DEVICES in the evidence",
        "memory": "compress weights (optimum-cli --weight-format int4/int8), lower options.n_ctx, and keep the "
                  "KV cache at u8 (options.kv_cache_precision)",
        "stability": "pin threads and num_streams = 1, set options.config ENABLE_CPU_PINNING = 'NO' on shared "
                     "hosts, and remove background load",
    }

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.device = ov_device(ref)
        self.folder = Path()
        self._compiled: Any = None
        self._request: Any = None
        self._tensor: Any = None  # openvino.Tensor
        self._tokenizer: Any = None
        self._inputs: set[str] = set()
        self._config: dict[str, Any] = {}
        self._model_config: dict[str, Any] = {}
        self._available: list[str] = []
        self._weights: dict[str, Any] = {}
        self._sliced = False
        self._n_ctx = self._vocab = self._pos = 0
        self._last: np.ndarray | None = None
        self._mask = self._positions = np.zeros((1, 0), dtype=np.int64)
        self._beam = np.zeros(1, dtype=np.int32)  # one beam: each row keeps its own cache
        self._logits_from = {True: np.array([0], dtype=np.int64), False: np.array([-1], dtype=np.int64)}

    @classmethod
    def import_runtime(cls) -> None:
        OpenVinoBackend.import_runtime()
        try:
            _genai()
        except Exception as exc:
            raise BackendUnavailable(f"openvino-genai is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def prepare(cls, ref: ModelRef) -> None:
        """Load OpenVINO's plugins and openvino-genai before the worker notes its footprint, and build (then drop)
        the folder's tokenizer once: a process's first ``openvino_genai.Tokenizer`` loads and initialises
        openvino-tokenizers' library (32 MB measured), the library's memory, not the model's. Failures are
        ``load``'s to report."""
        with contextlib.suppress(Exception):
            cls.import_runtime()
            folder = model_folder(ref.file)
            if (folder / TOKENIZER_XML).is_file():
                _genai().Tokenizer(str(folder))

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        return OpenVinoBackend.available_devices(ref)

    # ----------------------------------------------------------------------- settings and load

    def compile_config(self) -> dict[str, Any]:
        """framework ``openvino``'s properties from the plan, plus options.precision and kv_cache_precision
        (options.config wins over both); a bad value is a ModelError naming the option."""
        config = OpenVinoBackend(self.ref).compile_config()
        precision, kv = self.ref.option("precision"), self.ref.option("kv_cache_precision")
        if precision is not None:
            if str(precision).lower() not in PRECISIONS:
                raise ModelError(f"options.precision = {precision!r} is not one of f32, bf16, f16",
                                 hint="f32 to certify an FP32 IR's own numbers, bf16/f16 for the device's fast path")
            config.setdefault("INFERENCE_PRECISION_HINT", PRECISIONS[str(precision).lower()])
        if kv is not None:
            if str(kv).lower() not in KV_CACHE_PRECISIONS:
                raise ModelError(f"options.kv_cache_precision = {kv!r} is not one of {', '.join(KV_CACHE_PRECISIONS)}")
            config.setdefault("KV_CACHE_PRECISION", str(kv).lower())
        return config

    def load(self) -> None:
        self.folder = model_folder(self.ref.file)
        check_folder(self.folder)
        self._config = self.compile_config()
        self._model_config = read_config(self.folder)
        core = ov_core()
        self._available = [str(d) for d in core.available_devices]
        model = self._read(core, self.folder / MODEL_XML)
        self._inputs = check_stateful(model, self.folder / MODEL_XML)
        self._weights = weight_compression(model)
        self._sliced = slice_logits(model)
        self._vocab = self._vocab_size(model)
        self._n_ctx = self._context()
        self._compile(core, model)
        self._tokenizer = self._load_tokenizer()
        self._mask = np.ones((1, self._n_ctx), dtype=np.int64)
        self._positions = np.arange(self._n_ctx, dtype=np.int64)[None]

    def _read(self, core: Any, path: Path) -> Any:
        try:
            return core.read_model(str(path))
        except Exception as exc:
            raise ModelError(f"OpenVINO could not read {path}: {first_cause(exc)}",
                             hint=f"{MODEL_XML} and its .bin must come from the same export; {EXPORT_HINT}") from None

    def _compile(self, core: Any, model: Any) -> None:
        try:
            self._compiled = core.compile_model(model, self.device, self._config)
            self._request = self._compiled.create_infer_request()
            self._tensor = ov_module().Tensor
        except Exception as exc:  # pybind RuntimeError with nested C++ locations: keep the cause only
            cause = first_cause(exc)
            raise ModelError(f"OpenVINO could not compile {self.folder / MODEL_XML} for device {self.device!r}: "
                             f"{cause}", hint=OpenVinoBackend(self.ref).compile_hint(cause)) from None

    def _load_tokenizer(self) -> Any:
        try:
            return _genai().Tokenizer(str(self.folder))
        except Exception as exc:
            raise ModelError(f"openvino-genai could not load the tokenizer in {self.folder}: {first_cause(exc)}",
                             hint=f"{TOKENIZER_XML} must match this openvino-tokenizers version; {TOKENIZER_HINT}"
                             ) from None

    def _vocab_size(self, model: Any) -> int:
        dim = model.output("logits").get_partial_shape()[2]
        return int(dim.get_length()) if dim.is_static else int(self._model_config.get("vocab_size", 0))

    def _context(self) -> int:
        n_ctx = self.ref.option("n_ctx", self._model_config.get("max_position_embeddings") or DEFAULT_N_CTX)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ModelError(f"options.n_ctx = {n_ctx!r} must be a positive integer")
        return n_ctx

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("tokens", ("batch", "sequence"), "int32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Logits float32 [batch, n, vocab]: each row from an empty context (``reset_state``) in one call; this
        also ends the running ``decode_step`` context, which restarts at its next step."""
        tokens = self._checked(np.asarray(feeds["tokens"])).astype(np.int64)
        batch, n = tokens.shape
        out = np.empty((batch, n, self._vocab), dtype=np.float32)
        for row in range(batch):
            self._request.reset_state()
            out[row] = self._run(tokens[row:row + 1], 0, every=True)[0]
        self._pos, self._last = 0, None
        return [out]

    def prefill(self, tokens: np.ndarray) -> int:
        """Process a 1-D prompt from an empty context, computing only its last position's logits
        (``last_logits()``), and return the greedy next token; ``decode_step`` continues after it."""
        prompt = np.asarray(tokens)
        if prompt.ndim != 1:
            raise ModelError(f"prefill takes a 1-D prompt, got shape {tuple(prompt.shape)}")
        ids = self._checked(prompt.astype(np.int64)[None])
        self._request.reset_state()
        self._last = self._run(ids, 0, every=False)[0, -1].copy()
        self._pos = ids.shape[1]
        return int(np.argmax(self._last))

    def decode_step(self, token: int) -> None:
        """Append one token to the KV cache and compute its next-token logits (``last_logits()``); a full context
        (``n_ctx`` tokens) restarts from this token."""
        if not 0 <= token < self._vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self._vocab - 1})")
        if self._pos == 0 or self._pos >= self._n_ctx:
            self._request.reset_state()
            self._pos = 0
        self._last = self._run(np.array([[token]], dtype=np.int64), self._pos, every=False)[0, -1].copy()
        self._pos += 1

    def _run(self, ids: np.ndarray, start: int, every: bool) -> np.ndarray:
        """One infer of ``ids`` [1, n] at positions start..start+n-1 after the request's cached context; the logits
        of every position or (``every=False``, where the head is sliced) of the last one. A view: copy it."""
        end = start + ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": self._mask[:, :end], "beam_idx": self._beam}
        if "position_ids" in self._inputs:
            feeds["position_ids"] = self._positions[:, start:end]
        if self._sliced:
            feeds[LOGITS_FROM] = self._logits_from[every]
        try:  # bound without copies; start/wait, unlike infer(), copies no outputs (all the logits) into a dict
            for name, array in feeds.items():
                self._request.set_tensor(name, self._tensor(array, shared_memory=True))
            self._request.start_async()
            self._request.wait()
        except Exception as exc:
            raise ModelError(f"OpenVINO inference failed: {first_cause(exc)}") from None
        return np.asarray(self._request.get_tensor("logits").data, dtype=np.float32)

    def last_logits(self) -> np.ndarray:
        """The next-token logits [vocab] of the last prefilled or decoded position (a copy)."""
        if self._last is None:
            raise ModelError("no decode_step or prefill has run since the context (re)started")
        return np.array(self._last, dtype=np.float32)

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        return checked_tokens(tokens, self._n_ctx, self._vocab,
                              "raise options.n_ctx to at least {n} (up to the model's max_position_embeddings)")

    def tokenize(self, text: str) -> list[int]:
        """The folder's openvino-tokenizers tokenizer, without BOS/EOS."""
        return [int(t) for t in self._tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def special_tokens(self) -> dict[str, Any]:
        """BOS/EOS as the folder's tokenizer adds them (openvino-tokenizers kept the source tokenizer's
        add_special_tokens policy in openvino_tokenizer.xml), found by encoding one word both ways."""
        tok = self._tokenizer
        return added_specials(lambda text, special: tok.encode(text, add_special_tokens=special).input_ids.data[0],
                              f"{TOKENIZER_XML} (openvino-tokenizers, add_special_tokens)")

    def detokenize(self, tokens: list[int]) -> str:
        if not (self.folder / DETOKENIZER_XML).is_file():
            raise ModelError(f"OpenVINO GenAI: {self.folder} has no {DETOKENIZER_XML}, so it cannot detokenize",
                             hint=TOKENIZER_HINT + " with with_detokenizer=True")
        return str(self._tokenizer.decode([int(t) for t in tokens]))

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        return ",".join(str(d) for d in self._compiled.get_property("EXECUTION_DEVICES"))

    def info(self) -> dict[str, Any]:
        in_force, executed = read_back(self._compiled), self.executed_device().split(",")
        first = in_force.get(executed[0]) or next(iter(in_force.values()), {})
        return {
            "framework": "openvino-genai", "version": _version("openvino-genai"),
            "versions": {d: _version(d) for d in DISTRIBUTIONS},
            "device_requested": self.device, "execution_devices": executed,
            "inference_precision": first.get("INFERENCE_PRECISION_HINT"),
            "precision": precision_key(first.get("INFERENCE_PRECISION_HINT")),
            "kv_cache_precision": first.get("KV_CACHE_PRECISION"),
            "dynamic_quantization_group_size": first.get("DYNAMIC_QUANTIZATION_GROUP_SIZE"),
            "inference_num_threads": first.get("INFERENCE_NUM_THREADS"), "threads_requested": self.ref.threads or None,
            "in_force": in_force, "config_requested": self._config, "available_devices": self._available,
            "n_ctx": self._n_ctx, "max_position_embeddings": self._model_config.get("max_position_embeddings"),
            "vocab": self._vocab, "model_type": self._model_config.get("model_type"),
            "weight_compression": self._weights, "kv_cache": "stateful infer request",
            "logits_head": "last position only for prefill/decode (sliced, as LLMPipeline)" if self._sliced
                           else "every position (the head could not be sliced)",
            "tokenizer": TOKENIZER_XML,
            "detokenizer": DETOKENIZER_XML if (self.folder / DETOKENIZER_XML).is_file() else None,
        }

    def close(self) -> None:
        self._request = self._compiled = self._tokenizer = None
        self._last, self._pos = None, 0
