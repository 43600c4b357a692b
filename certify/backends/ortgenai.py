"""ONNX Runtime GenAI backend (``onnxruntime-genai``): a GenAI model folder run as a ``LanguageModel``.

The plan's ``path`` is the folder Olive or ``python -m onnxruntime_genai.models.builder`` writes (or a file in it):
``genai_config.json``, the decoder ``model.onnx`` (+ ``model.onnx.data``), ``tokenizer.json`` and
``tokenizer_config.json``. A missing or broken config or decoder file is a ModelError naming the file.

Plan keys: ``device`` picks the execution provider (``cpu``: CPU whatever the folder asks; ``gpu``: the folder's
GPU provider, else ``cuda`` where this build has it, else ``dml``; ``npu``: ``qnn``; a ``providers`` entry such as
``cuda`` overrides it); ``threads``: the decoder session's ``intra_op_num_threads`` (0 keeps the folder's or
onnxruntime's default); ``options.n_ctx`` (default ``search.max_length``, at most ``model.context_length``): the
generator's ``max_length``. A longer prompt is a ModelError, never a truncation; a full decode context restarts.
With ``past_present_share_buffer`` (the builder's default) the KV cache is allocated for all of ``n_ctx`` at load.

One ``og.Generator`` serves every call, emptied with ``rewind_to(0)`` (a new one for model types that cannot
rewind): ``infer`` appends each row and reads the ``logits`` output of every position; ``prefill`` appends the
prompt and returns its last position's greedy token; ``decode_step`` appends one token. ``executed_device()`` is the
provider of the device onnxruntime-genai says the model runs on (``Model.device_type``), not the one asked for.

The og tokenizer (onnxruntime-extensions) runs with ``add_special_tokens`` off (no BOS). On, it adds a Llama BOS
whatever the metadata says, so ``special_tokens()`` reads the folder: ``tokenizer_config.json``'s
``add_bos_token`` / ``add_eos_token``, else ``tokenizer.json``'s post-processor template (what transformers applies),
and only when neither says, the og tokenizer. The og decoder ignores ``tokenizer.json``'s ``Strip`` decoder (the
SentencePiece dummy-prefix space): ``detokenize`` applies it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec, checked_tokens
from certify.backends.onnxruntime import onnx_summary
from certify.backends.special import PROBE, added_specials
from certify.errors import BackendUnavailable, ModelError, first_line
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

CONFIG_FILE = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
WEIGHT_SUFFIXES = (".onnx", ".data", ".onnx_data")
FOLDER_HINT = ("name the folder Olive or python -m onnxruntime_genai.models.builder wrote (genai_config.json, "
               "model.onnx, model.onnx.data, tokenizer.json); a bare .onnx runs with framework = \"onnxruntime\"")
# onnxruntime-genai's provider names (lowercased, 'ExecutionProvider' dropped, as it normalizes them itself)
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider",
             "qnn": "QNNExecutionProvider", "webgpu": "WebGpuExecutionProvider",
             "openvino": "OpenVINOExecutionProvider", "nvtensorrtrtx": "NvTensorRTRTXExecutionProvider"}
DEVICE_CLASS = {"cpu": "cpu", "openvino": "cpu", "cuda": "gpu", "dml": "gpu", "webgpu": "gpu", "nvtensorrtrtx": "gpu",
                "qnn": "npu"}
GPU_PROVIDERS = ("cuda", "dml", "webgpu", "nvtensorrtrtx")
BUILDS = {"cuda": "pip install onnxruntime-genai-cuda (with onnxruntime-gpu)",
          "dml": "pip install onnxruntime-genai-directml (Windows)",
          "qnn": "an onnxruntime build with the QNN provider (onnxruntime-qnn, Snapdragon)"}
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-qnn")


def _og() -> Any:
    """The onnxruntime_genai module, imported on first use (never at import time of this module)."""
    import onnxruntime_genai

    return onnxruntime_genai


def _built(provider: str) -> bool:
    """Was this onnxruntime-genai built with ``provider`` (``og.is_cuda_available()`` ...)? Not that it runs here."""
    return bool(getattr(_og(), f"is_{provider}_available", lambda: False)())


def _version(names: tuple[str, ...]) -> str:
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{metadata.version(name)}" + ("" if name == names[0] else f" ({name})")
    return "missing"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, {} when it is absent or not an object (for files whose absence only loses detail)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``genai_config.json``, checked: present, JSON, a model type and a decoder file that exists."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ModelError(f"ortgenai: {folder} has no {CONFIG_FILE}, so it is not an ONNX Runtime GenAI model folder",
                         hint=FOLDER_HINT)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"ortgenai: {file} is not valid JSON: {exc}",
                         hint="re-export the model, or restore the file the builder wrote") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not model.get("type") or not isinstance(model.get("decoder"), dict) \
            or not isinstance(model["decoder"].get("filename"), str):
        raise ModelError(f"ortgenai: {file} names no model.type and model.decoder.filename",
                         hint="re-export the model with onnxruntime_genai.models.builder or Olive")
    onnx = folder / model["decoder"]["filename"]
    if not onnx.is_file():
        raise ModelError(f"ortgenai: {onnx} (model.decoder.filename in {CONFIG_FILE}) does not exist",
                         hint="copy the whole folder the builder wrote (model.onnx and model.onnx.data) or re-export")
    return dict(config)


def config_providers(config: Mapping[str, Any]) -> list[str]:
    """The providers the folder's config asks for (``model.decoder.session_options.provider_options``), in order."""
    options = config["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    return [name for entry in options if isinstance(entry, dict) for name in entry]


def normalized(provider: str) -> str:
    return provider.lower().removesuffix("executionprovider")


def choose_provider(ref: ModelRef, config: Mapping[str, Any]) -> str:
    """The provider (onnxruntime-genai's name) for ``ref``: its first ``providers`` entry, else from its device."""
    if ref.providers:
        return normalized(ref.providers[0])
    if ref.device_class == "gpu":
        own = [p for p in map(normalized, config_providers(config)) if p in GPU_PROVIDERS]
        return own[0] if own else "dml" if not _built("cuda") and _built("dml") else "cuda"
    return {"cpu": "cpu", "npu": "qnn"}.get(ref.device_class, ref.device_class)


def template_specials(tokenizer: Mapping[str, Any]) -> tuple[list[int], list[int]] | None:
    """The special token ids ``tokenizer.json``'s post-processor puts before and after a single text
    (a ``TemplateProcessing``, alone or in a ``Sequence``); None when it has no template."""
    processor = tokenizer.get("post_processor") or {}
    steps = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    template = next((s for s in steps if isinstance(s, dict) and s.get("type") == "TemplateProcessing"), None)
    if template is None:
        return None
    ids = {name: [int(i) for i in token.get("ids", [])] for name, token in template.get("special_tokens", {}).items()}
    single = [p for p in template.get("single", []) if isinstance(p, dict)]
    at = next((i for i, piece in enumerate(single) if "Sequence" in piece), None)
    if at is None:
        return None

    def specials(pieces: list[dict[str, Any]]) -> list[int]:
        return [i for p in pieces if "SpecialToken" in p for i in ids.get(p["SpecialToken"].get("id"), [])]

    return specials(single[:at]), specials(single[at + 1:])


def strip_decoder(tokenizer: Mapping[str, Any]) -> tuple[str, int] | None:
    """``tokenizer.json``'s ``Strip`` decoder (content, leading count), alone or in a ``Sequence``, if any."""
    decoder = tokenizer.get("decoder") or {}
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    strip = next((s for s in steps if isinstance(s, dict) and s.get("type") == "Strip"), None)
    return (str(strip.get("content", " ")), int(strip.get("start", 0))) if strip and strip.get("start") else None


def load_failure(folder: Path, exc: BaseException) -> ModelError:
    """A one-line ModelError for onnxruntime-genai's load error, with a hint that fits it."""
    cause = first_line(str(exc)) or type(exc).__name__
    lowered = cause.lower()
    if "external" in lowered:
        hint = "the ONNX model's external weights (model.onnx.data) are missing or truncated: copy the whole folder"
    elif "model_type" in lowered:
        hint = "this onnxruntime-genai does not know the model type: upgrade onnxruntime-genai or re-export the model"
    elif "provider" in lowered or "interface not available" in lowered:
        hint = "install the onnxruntime-genai build for that provider (" + "; ".join(BUILDS.values()) + ")"
    else:
        hint = "check the folder is complete as the builder or Olive wrote it (re-export it; compare its sha256)"
    return ModelError(f"onnxruntime-genai could not load {folder}: {cause}", hint=hint)


class OrtGenAiBackend:
    """Runs an ONNX Runtime GenAI model folder (see the module docstring for the folder and the plan keys)."""

    name: ClassVar[str] = "ortgenai"
    distributions: ClassVar[tuple[str, ...]] = ("onnxruntime-genai", "onnxruntime-genai-cuda",
                                                 "onnxruntime-genai-directml", *ORT_DISTRIBUTIONS, "onnx")
    install_hint: ClassVar[str] = install_hint("ortgenai")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "one onnxruntime-genai generator serves one request at a time here (clients take turns): give each "
                  "concurrent client its own generator (the KV cache is preallocated for n_ctx per generator)",
        "memory": "lower options.n_ctx (with past_present_share_buffer the KV cache is allocated for all of it at "
                  "load), and export int4 weights (builder -p int4: MatMulNBits)",
        "speed": "set threads to the physical cores, export int4 (builder -p int4; --extra_options "
                 "int4_accuracy_level=4 computes in int8 on CPUs with VNNI), use a GPU/NPU provider where there is one",
        "accuracy": "export with more precision (-p fp16/fp32, or int4 with int4_accuracy_level 1-2 or a smaller "
                    "int4_block_size) or quantize with a calibrated method (Olive GPTQ/AWQ)",
        "stability": "pin threads below the core count and remove background load",
    }

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.folder = Path()
        self.config: dict[str, Any] = {}
        self._provider = "cpu"
        self._model: Any = None
        self._params: Any = None
        self._generator: Any = None
        self._tokenizer: Any = None
        self._strip: tuple[str, int] | None = None  # tokenizer.json's Strip decoder, where og's decoder ignores it
        self._n_ctx = self._vocab = self._pos = 0

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import onnxruntime_genai  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime-genai is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def prepare(cls, ref: ModelRef) -> None:
        """Parse the decoder ONNX (for ``info()["precision"]``) before the worker notes its memory baseline: the
        protobuf and the onnx import are the harness's memory, not the model's. ``load`` reports a broken folder."""
        with contextlib.suppress(Exception):
            folder = model_folder(ref.file)
            onnx_summary(folder / read_config(folder)["model"]["decoder"]["filename"])

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        og = _og()
        config: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            config = read_config(model_folder(ref.file))
        provider = choose_provider(ref, config)
        built = {p: _built(p) for p in ("cuda", "dml", "qnn", "webgpu")}
        ort: list[str] | None = None
        with contextlib.suppress(Exception):
            import onnxruntime

            ort = list(onnxruntime.get_available_providers())
        detail = (f"onnxruntime-genai {og.__version__} built with: {', '.join(p for p, ok in built.items() if ok)}"
                  f" besides cpu; onnxruntime {_version(ORT_DISTRIBUTIONS)} providers here: {', '.join(ort or ['?'])}")
        name = ORT_NAMES.get(provider, provider)
        if provider == "cpu" or (built.get(provider, True) and (ort is None or name in ort)):
            return True, f"{name}; {detail}"
        return False, (f"{name} (device {ref.device!r}) is not available: {detail}; "
                       + BUILDS.get(provider, f"install an onnxruntime-genai build with {name}"))

    # ----------------------------------------------------------------------- load

    def load(self) -> None:
        self.folder = model_folder(self.ref.file)
        if not self.folder.is_dir():
            raise ModelError(f"ortgenai: {self.ref.file} does not exist", hint="check the plan's path")
        self.config = read_config(self.folder)
        self._provider = choose_provider(self.ref, self.config)
        self._n_ctx, self._vocab = self._context(), int(self.config["model"].get("vocab_size") or 0)
        og = _og()
        try:
            self._model = og.Model(self._og_config())
            self._params = og.GeneratorParams(self._model)
            self._params.set_search_options(max_length=self._n_ctx, batch_size=1)
            self._generator = og.Generator(self._model, self._params)
        except Exception as exc:  # pybind RuntimeError: keep onnxruntime-genai's words, drop the rest
            raise load_failure(self.folder, exc) from None
        if not self._vocab:
            self._vocab = int(self._infer_row(np.zeros((1, 1), np.int32)).shape[-1])

    def _context(self) -> int:
        """``options.n_ctx``, checked against the model's ``context_length``."""
        model, search = self.config["model"], self.config.get("search", {})
        limit = int(model.get("context_length") or search.get("max_length") or 0)
        n_ctx = self.ref.option("n_ctx", int(search.get("max_length") or limit))
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ModelError(f"options.n_ctx = {n_ctx!r} must be a positive integer")
        if limit and n_ctx > limit:
            raise ModelError(f"options.n_ctx = {n_ctx} exceeds the model's context_length = {limit} "
                             f"({self.folder / CONFIG_FILE})", hint=f"set options.n_ctx to at most {limit}")
        return n_ctx

    def _og_config(self) -> Any:
        """``og.Config`` for the folder with the chosen provider (the folder's own, with its options, when it is
        the one chosen) and the plan's threads."""
        config = _og().Config(str(self.folder))
        asked = [normalized(p) for p in config_providers(self.config)]
        if asked != ([] if self._provider == "cpu" else [self._provider]):
            config.clear_providers()
            if self._provider != "cpu":
                config.append_provider(self._provider)
        if self.ref.threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": int(self.ref.threads)}}}}))
        return config

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("tokens", ("batch", "sequence"), "int32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Logits float32 [batch, n, vocab]: each row from an empty context through the generator (this also
        ends the running ``decode_step`` context, which restarts at its next step)."""
        tokens = self._checked(np.asarray(feeds["tokens"]))
        out = np.empty((*tokens.shape, self._vocab), dtype=np.float32)
        for row in range(tokens.shape[0]):
            out[row] = self._infer_row(tokens[row:row + 1])[0]
        self._pos = 0
        return [out]

    def _infer_row(self, tokens: np.ndarray) -> np.ndarray:
        self._restart()
        self._append(tokens)
        logits = self._generator.get_output("logits")
        if logits.shape[1] != tokens.shape[1]:
            raise ModelError(f"ortgenai: the model's logits output has {logits.shape[1]} position(s) for a "
                             f"{tokens.shape[1]}-token prompt: it does not compute every position's logits",
                             hint="re-export the model with the full logits output (the builder's default)")
        return np.asarray(logits, dtype=np.float32)

    def prefill(self, tokens: np.ndarray) -> int:
        """Append a 1-D prompt to an empty context and return the greedy next token of its last position (time
        to first token); ``decode_step`` continues after it."""
        prompt = np.asarray(tokens)
        if prompt.ndim != 1:
            raise ModelError(f"prefill takes a 1-D prompt, got shape {tuple(prompt.shape)}")
        checked = self._checked(prompt[None])
        self._restart()
        self._append(checked)
        self._pos = checked.shape[1]
        return int(np.argmax(self._generator.get_logits().reshape(-1)))

    def decode_step(self, token: int) -> None:
        """Append one token to the running context (its next-token logits: ``last_logits()``); a full context
        (``n_ctx`` tokens) restarts from this token."""
        if not 0 <= token < self._vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self._vocab - 1})")
        if self._pos == 0 or self._pos >= self._n_ctx:
            self._restart()
        self._append(np.array([[token]], dtype=np.int32))
        self._pos += 1

    def last_logits(self) -> np.ndarray:
        """The next-token logits [vocab] of the last evaluated position (a copy)."""
        if self._pos == 0:
            raise ModelError("no decode_step or prefill has run since the context (re)started")
        return np.array(self._generator.get_logits().reshape(-1), dtype=np.float32)

    def _append(self, tokens: np.ndarray) -> None:
        try:
            self._generator.append_tokens(np.ascontiguousarray(tokens, dtype=np.int32))
        except RuntimeError as exc:
            raise ModelError(f"onnxruntime-genai: {first_line(str(exc))}",
                             hint="raise options.n_ctx or use shorter prompts (dataset.context)") from None

    def _restart(self) -> None:
        """An empty context: ``rewind_to(0)``, or a new generator where the model cannot rewind."""
        self._pos = 0
        try:
            self._generator.rewind_to(0)
        except RuntimeError:
            self._generator = _og().Generator(self._model, self._params)

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        return checked_tokens(tokens, self._n_ctx, self._vocab,
                              "raise options.n_ctx to at least {n} (up to the model's context_length; the KV "
                              "cache grows with it)")

    # ----------------------------------------------------------------------- tokenizer

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._og_tokenizer().encode(text)]

    def detokenize(self, tokens: list[int]) -> str:
        text = str(self._og_tokenizer().decode(np.asarray([int(t) for t in tokens], dtype=np.int32)))
        content, count = self._strip or ("", 0)
        for _ in range(count):
            text = text.removeprefix(content)
        return text

    def special_tokens(self) -> dict[str, Any]:
        """BOS/EOS as the folder's metadata asks, each read from the first file that says: tokenizer_config.json
        (``add_bos_token`` / ``add_eos_token``), the tokenizer.json post-processor, else the og tokenizer with
        ``add_special_tokens`` on. Token ids: genai_config.json's ``model.bos_token_id`` / ``eos_token_id``."""
        said = _read_json(self.folder / "tokenizer_config.json")
        template = template_specials(_read_json(self.folder / "tokenizer.json"))
        probe: dict[str, Any] | None = None
        record: dict[str, Any] = {}
        sources = [f"{CONFIG_FILE} model.bos_token_id/eos_token_id"]
        for side, index in (("bos", 0), ("eos", 1)):
            key = f"add_{side}_token"
            if isinstance(said.get(key), bool):
                added, token = said[key], self._special_id(side)
                sources.append(f"tokenizer_config.json {key} = {str(said[key]).lower()}")
            elif template is not None:
                ids = template[index]
                added, token = bool(ids), (ids[0] if side == "bos" else ids[-1]) if ids else self._special_id(side)
                sources.append(f"tokenizer.json post_processor adds {'no ' if not ids else ''}{side.upper()} "
                               f"({key} absent from tokenizer_config.json)")
            else:
                probe = probe or added_specials(self._encode_special, "")
                added, token = probe[f"add_{side}"], probe[side] if probe[side] is not None else self._special_id(side)
                sources.append(f"{key} said nowhere: the og tokenizer's add_special_tokens")
            record |= {f"add_{side}": bool(added), side: token}
        return {**record, "source": "; ".join(sources)}

    def _special_id(self, side: str) -> int | None:
        value = self.config["model"].get(f"{side}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            tokenizer = self._og_tokenizer()
            value = tokenizer.bos_token_id if side == "bos" else next(iter(tokenizer.eos_token_ids), None)
        return None if value is None or int(value) < 0 else int(value)

    def _encode_special(self, text: str, special: bool) -> list[int]:
        tokenizer = self._og_tokenizer()
        if not hasattr(tokenizer, "update_options"):  # an older onnxruntime-genai: no special tokens to ask for
            return [int(t) for t in tokenizer.encode(text)]
        tokenizer.update_options(add_special_tokens="true" if special else "false")
        try:
            return [int(t) for t in tokenizer.encode(text)]
        finally:
            tokenizer.update_options(add_special_tokens="false")

    def _og_tokenizer(self) -> Any:
        """The folder's og tokenizer, loaded on first use, its special tokens off (the harness adds BOS/EOS)."""
        if self._tokenizer is None:
            if not any((self.folder / name).is_file() for name in TOKENIZER_FILES):
                raise ModelError(f"ortgenai: {self.folder} has no tokenizer, so it cannot tokenize text (looked "
                                 f"for {', '.join(TOKENIZER_FILES)})", hint="copy the tokenizer files of the model "
                                 "it was exported from into the folder, or use a token dataset")
            try:
                tokenizer = _og().Tokenizer(self._model)
                if hasattr(tokenizer, "update_options"):
                    tokenizer.update_options(add_special_tokens="false")
                kept = str(tokenizer.decode(tokenizer.encode(PROBE))) != PROBE  # the decoder kept the prefix space
                self._strip = strip_decoder(_read_json(self.folder / "tokenizer.json")) if kept else None
                self._tokenizer = tokenizer
            except Exception as exc:
                raise ModelError(f"onnxruntime-genai could not load the tokenizer of {self.folder}: "
                                 f"{first_line(str(exc))}", hint="check tokenizer.json / tokenizer_config.json "
                                                                 "(the exporter writes both)") from None
        return self._tokenizer

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        """The provider of the device onnxruntime-genai says the model runs on (``Model.device_type``)."""
        device = str(self._model.device_type) if self._model is not None else "not loaded"
        return ORT_NAMES.get(normalized(device), f"{device} (onnxruntime-genai device type)")

    def info(self) -> dict[str, Any]:
        og, model = _og(), self.config["model"]
        session = model["decoder"].get("session_options", {})
        decoder = self.folder / model["decoder"]["filename"]
        summary = onnx_summary(decoder)
        files = {f.name: f.stat().st_size for f in sorted(self.folder.iterdir())
                 if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)}
        provider, shared = self.executed_device(), self.config.get("search", {}).get("past_present_share_buffer")
        return {
            "framework": "onnxruntime-genai", "version": og.__version__,
            "onnxruntime_version": _version(ORT_DISTRIBUTIONS),
            "model_type": str(self._model.type), "device": DEVICE_CLASS.get(normalized(provider), "unknown"),
            "provider": provider, "provider_requested": ORT_NAMES.get(self._provider, self._provider),
            "providers_in_config": config_providers(self.config) or ["cpu (none named)"],
            "threads": int(self.ref.threads) if self.ref.threads else session.get(
                "intra_op_num_threads", "onnxruntime's default (one per physical core)"),
            "threads_requested": self.ref.threads or None,
            "n_ctx": self._n_ctx, "context_length": model.get("context_length"), "vocab": self._vocab,
            "kv_cache": "onnxruntime-genai" + (" (allocated for n_ctx: past_present_share_buffer)" if shared else ""),
            "decoder": decoder.name, "onnx_files": files, "stored_bytes": sum(files.values()),
            "precision": summary.precision if summary else None,
            "tokenizer": [name for name in TOKENIZER_FILES if (self.folder / name).is_file()],
        }

    def close(self) -> None:
        self._generator = self._params = self._tokenizer = self._model = None
        self._pos = 0
