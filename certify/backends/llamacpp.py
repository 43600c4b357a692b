"""llama.cpp backend (``llama-cpp-python``): a GGUF causal language model, as a ``LanguageModel``.

Plan keys used: ``threads`` (generation and prompt threads; 0 = llama-cpp-python's default: half the logical CPUs
for generation, all of them for prompts; ``info()`` records what is in force), ``device``
(``gpu`` offloads every layer unless ``options.n_gpu_layers`` says otherwise) and these ``options``:

- ``n_ctx`` (default 512): the context, in tokens. A prompt longer than it is a ModelError, never a silent
  truncation; the KV cache, and with it the memory, grows linearly with it.
- ``n_batch`` (default 512): the most tokens handed to llama.cpp in one decode call (prompt processing).
- ``use_mmap`` (default **false**): with mmap on, the weights are mapped, not read, and count in the resident set
  only as their pages are touched (and are shared with the page cache), so the memory gate would measure
  whatever part of the model had been paged in, not the model. Measure with it off; turn it on to certify a
  deployment that really maps.
- ``n_gpu_layers`` (default 0 on ``cpu``, all on ``gpu``): layers offloaded to a GPU backend.
- ``kv_cache_type`` (``f16`` default, ``f32``, ``q8_0``, ``q4_0``): the KV cache's element type; a quantized
  cache needs flash attention, which is then switched on.

The evaluation bypasses ``Llama.eval``: it fills its own ``llama_batch`` and reads ``llama_get_logits``, so the
per-token logits are not also copied into a Python-side ``[n_ctx, vocab]`` buffer (``logits_all=True``), which
would add ``n_ctx * vocab * 4`` bytes to the memory being measured. llama.cpp's log goes to a capture buffer while a
model is loaded, so a failure is reported with llama.cpp's own words, not the binding's generic ValueError. One
backend holds one llama.cpp context: calls must not overlap (the worker makes them one at a time).
"""

from __future__ import annotations

import ctypes
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from certify.backends.base import TensorSpec, checked_tokens
from certify.errors import BackendUnavailable, ModelError
from certify.frameworks import install_hint
from certify.plan.types import ModelRef

DEFAULT_N_CTX = 512
DEFAULT_N_BATCH = 512
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}  # GGML_TYPE_*
GGML_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}
GGML_LOG_LEVEL_ERROR = 4  # ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
ERROR_WORDS = ("error", "failed", "invalid")
LOAD_ERROR = "error loading model: "
TRUNCATION_WORDS = ("bounds", "corrupt", "incomplete", "magic", "failed to read", "eof", "truncated")
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
BUFFER = re.compile(r"(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
BUFFER_NAMES = {"model": "weights", "KV": "kv_cache", "compute": "compute", "output": "output"}


def reported_buffers(lines: list[tuple[int, str]]) -> dict[str, int]:
    """The buffers llama.cpp reports allocating at load (its ``... buffer size = N MiB`` lines, every device
    summed): ``weights``, ``kv_cache`` (for the whole n_ctx), ``compute`` (reserved for the worst-case batch;
    only what a batch touches becomes resident) and ``output`` (the logits buffer), in bytes."""
    found: dict[str, int] = {}
    for _, text in lines:
        for kind, mib in BUFFER.findall(text):
            name = BUFFER_NAMES[kind]
            found[name] = found.get(name, 0) + round(float(mib) * 1024 * 1024)
    return found
GPU_BUILDS = ("rebuild llama-cpp-python with a GPU backend, e.g. CMAKE_ARGS='-DGGML_CUDA=on' (NVIDIA), "
              "'-DGGML_METAL=on' (Apple), '-DGGML_VULKAN=on' or '-DGGML_HIP=on' (AMD)")


def _lc() -> Any:
    """The llama_cpp module, imported on first use (never at import time of this module)."""
    import llama_cpp

    return llama_cpp


def ftype_name(ftype: int) -> str:
    """``LLAMA_FTYPE_MOSTLY_Q4_K_M`` (15) -> 'Q4_K_M'; 0 -> 'F32'; a type llama.cpp guessed (the file does not say
    it) gets ' (guessed)' appended."""
    lc = _lc()
    guessed = getattr(lc, "LLAMA_FTYPE_GUESSED", 1024)
    if ftype & guessed:
        return ftype_name(ftype & ~guessed) + " (guessed)"
    for name in dir(lc):
        if name.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")) and getattr(lc, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    return f"ftype {ftype}"


def ggml_devices() -> list[dict[str, str]]:
    """The ggml backend devices of this build (name, description, type), [] when the library does not say."""
    try:
        from llama_cpp import _ggml

        lib = _ggml.libggml
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype, lib.ggml_backend_dev_get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype, lib.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
        _lc().llama_backend_init()
        devices = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
        return [{"name": lib.ggml_backend_dev_name(d).decode(), "description":
                 lib.ggml_backend_dev_description(d).decode(),
                 "type": GGML_DEVICE_TYPES.get(lib.ggml_backend_dev_type(d), "?")} for d in devices]
    except Exception:  # a private, version-dependent entry point: its absence only loses detail
        return []


def system_info() -> str:
    return str(_lc().llama_print_system_info().decode("utf-8", "replace")).strip()


class LogCapture:
    """Routes llama.cpp's log (a process-global callback) into a bounded buffer until ``stop()``, which restores
    the callback that was installed before. ``lines()`` gives complete lines with their ggml log level."""

    def __init__(self, keep: int = 2000) -> None:
        self._parts: deque[tuple[int, str]] = deque(maxlen=keep)
        self._callback: Any = None
        self._previous: tuple[Any, Any] | None = None

    def start(self) -> None:
        if self._previous is not None:  # already capturing: never save our own callback as "the previous one"
            return
        lc = _lc()
        previous, user_data = lc.llama_log_callback(), ctypes.c_void_p()
        lc.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
        self._previous = (previous, user_data)
        self._callback = lc.llama_log_callback(self._on_log)
        lc.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user_data: Any) -> None:
        self._parts.append((level, text.decode("utf-8", "replace") if text else ""))

    def stop(self) -> None:
        if self._previous is not None:
            previous, user_data = self._previous
            _lc().llama_log_set(previous if previous else None, user_data)
            self._previous = None

    def lines(self) -> list[tuple[int, str]]:
        """Complete, stripped lines; a part that does not end a line (or a level-5 continuation) continues it."""
        lines: list[tuple[int, str]] = []
        level, current = 0, ""
        for part_level, text in self._parts:
            if not current and part_level != 5:
                level = part_level
            current += text
            while "\n" in current:
                line, current = current.split("\n", 1)
                if line.strip():
                    lines.append((level, line.strip()))
                level = part_level
        if current.strip():
            lines.append((level, current.strip()))
        return lines

    def errors(self) -> list[str]:
        """The lines llama.cpp logged as errors (or that say so), without their function prefix."""
        found = [text for level, text in self.lines()
                 if level == GGML_LOG_LEVEL_ERROR or any(word in text.lower() for word in ERROR_WORDS)]
        return [re.sub(r"^\w+: ", "", text) for text in found]


def load_failure(path: str, errors: list[str], exc: BaseException) -> ModelError:
    """A ModelError with llama.cpp's most telling line and a hint that fits it. llama.cpp's summary ('error
    loading model: ...') names the cause unless it is the generic 'failed to load model from': then the first
    error (e.g. gguf's 'invalid magic characters') does."""
    summary = next((e.split(LOAD_ERROR, 1)[1] for e in errors if LOAD_ERROR in e), "")
    if not summary or "failed to load model from" in summary:
        summary = errors[0] if errors and LOAD_ERROR not in errors[0] else summary
    if not summary:
        summary = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    lowered = summary.lower()
    if "architecture" in lowered:
        hint = ("this llama.cpp build does not know the model's architecture: upgrade llama-cpp-python (its "
                "llama.cpp) or convert the model with a supported architecture")
    elif any(word in lowered for word in TRUNCATION_WORDS):
        hint = "the file is truncated, corrupt or not a GGUF model: download or convert it again, compare its sha256"
    else:
        hint = "check the file is a complete GGUF model that this llama-cpp-python version supports"
    return ModelError(f"llama.cpp could not load {path}: {summary}", hint=hint)


class TokenBatch:
    """One ``llama_batch`` for a single sequence, filled through numpy views (no per-token Python loop)."""

    def __init__(self, capacity: int) -> None:
        lc = _lc()
        self.capacity = capacity
        self.batch = lc.llama_batch_init(capacity, 0, 1)
        self.tokens = np.ctypeslib.as_array(self.batch.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.batch.logits, shape=(capacity,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(capacity,))[:] = 1
        for i in range(capacity):
            self.batch.seq_id[i][0] = 0

    def fill(self, tokens: np.ndarray, start: int, all_logits: bool) -> None:
        n = len(tokens)
        self.tokens[:n] = tokens
        self.pos[:n] = np.arange(start, start + n, dtype=np.int32)
        self.logits[:n] = 1 if all_logits else 0
        self.logits[n - 1] = 1
        self.batch.n_tokens = n

    def free(self) -> None:
        if self.batch is not None:
            _lc().llama_batch_free(self.batch)
            self.batch = None


class LlamaCppBackend:
    """Runs a GGUF model with llama-cpp-python (see the module docstring for the plan keys)."""

    name: ClassVar[str] = "llamacpp"
    distributions: ClassVar[tuple[str, ...]] = ("llama-cpp-python", "gguf")
    install_hint: ClassVar[str] = install_hint("llamacpp")
    hints: ClassVar[Mapping[str, str]] = {
        "stress": "one llama.cpp context serves one request at a time (clients take turns): give each concurrent "
                  "client its own context (memory grows with n_ctx x contexts) or shorten turns (n_ctx, n_batch)",
        "memory": "reduce options.n_ctx (the KV cache grows linearly with it) or set options.kv_cache_type = "
                  "'q8_0'; use a smaller quantization (Q4_K_M, Q4_0); measure with options.use_mmap = false",
        "speed": "set threads to the number of physical cores, tune options.n_batch for prompt processing, offload "
                 "layers to a GPU (device = 'gpu' / options.n_gpu_layers with a GPU build of llama-cpp-python), "
                 "and pick a quantization with fast kernels for this CPU's SIMD (info.system_info: K-quants and "
                 "Q8_0 on AVX2/AVX-512, Q4_0 with runtime repacking on ARM NEON/i8mm)",
        "accuracy": "use a less aggressive quantization (Q8_0, Q6_K, Q5_K_M), keep the output and token-embedding "
                    "tensors in higher precision (llama-quantize --output-tensor-type / --token-embedding-type "
                    "q8_0), and quantize 3-bit and lower types with an importance matrix (llama-imatrix on "
                    "representative text)",
        "stability": "leave a core free (threads below the core count), keep options.use_mmap = false so page "
                     "faults do not land in timed runs, and remove background load",
    }

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self._llm: Any = None
        self._batch: TokenBatch | None = None
        self._log = LogCapture()
        self._n_ctx = self._n_batch = self._n_vocab = self._pos = 0
        self._offload: tuple[int, int] | None = None  # (offloaded, total) as llama.cpp logged it
        self._buffers: dict[str, int] = {}  # what llama.cpp reported allocating at load (reported_buffers)

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import llama_cpp  # noqa: F401
        except Exception as exc:
            raise BackendUnavailable(f"llama-cpp-python is not importable: {exc}", hint=cls.install_hint) from None

    @classmethod
    def available_devices(cls, ref: ModelRef) -> tuple[bool, str]:
        devices = ggml_devices()
        named = ", ".join(f"{d['name']} ({d['type']})" for d in devices) or "not listed"
        detail = f"llama.cpp devices here: {named}; {system_info()}"
        if ref.device_class == "cpu":
            return True, detail
        if ref.device_class == "gpu":
            has_gpu = any(d["type"] in ("GPU", "IGPU") for d in devices)
            ok = bool(_lc().llama_supports_gpu_offload()) and (has_gpu or not devices)
            return ok, detail if ok else f"no GPU offload in this llama-cpp-python build ({detail}); {GPU_BUILDS}"
        return False, f"llama.cpp has no {ref.device_class.upper()} backend; {detail}"

    # ----------------------------------------------------------------------- settings and load

    def settings(self) -> dict[str, Any]:
        """The plan's options for llama.cpp, checked; a bad value is a ModelError naming the option."""
        n_ctx, n_batch = self.ref.option("n_ctx", DEFAULT_N_CTX), self.ref.option("n_batch", DEFAULT_N_BATCH)
        gpu_default = -1 if self.ref.device_class == "gpu" else 0
        n_gpu_layers, use_mmap = self.ref.option("n_gpu_layers", gpu_default), self.ref.option("use_mmap", False)
        kv = str(self.ref.option("kv_cache_type", "f16")).lower()
        for key, value in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"options.{key} = {value!r} must be a positive integer")
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ModelError(f"options.n_gpu_layers = {n_gpu_layers!r} must be -1 (all) or a layer count >= 0")
        if not isinstance(use_mmap, bool):
            raise ModelError(f"options.use_mmap = {use_mmap!r} must be true or false")
        if kv not in KV_CACHE_TYPES:
            raise ModelError(f"options.kv_cache_type = {kv!r} is not one of {', '.join(KV_CACHE_TYPES)}")
        return {"n_ctx": n_ctx, "n_batch": n_batch, "n_gpu_layers": n_gpu_layers, "use_mmap": use_mmap,
                "kv_cache_type": kv, "threads": self.ref.threads or None}

    def load(self) -> None:
        settings, path = self.settings(), self.ref.file
        if not path.is_file():
            raise ModelError(f"llama.cpp could not load {path}: no such file", hint="check the plan's path")
        self._log.start()
        try:
            self._llm = self._construct(str(path), settings)
        except Exception as exc:  # the binding raises a generic ValueError; llama.cpp's log says why
            raise load_failure(str(path), self._log.errors(), exc) from None
        finally:
            self._log.stop()
        lc, ctx = _lc(), self._llm.ctx
        # llama.cpp may pad the context (to 256 with flash attention): the plan's n_ctx stays the limit
        self._n_ctx = min(settings["n_ctx"], int(lc.llama_n_ctx(ctx)))
        self._n_batch = int(lc.llama_n_batch(ctx))
        self._n_vocab = int(self._llm.n_vocab())
        self._batch = TokenBatch(self._n_batch)
        found = [OFFLOADED.search(text) for _, text in self._log.lines()]
        match = next((m for m in reversed(found) if m), None)
        self._offload = (int(match[1]), int(match[2])) if match else None
        self._buffers = reported_buffers(self._log.lines())

    @staticmethod
    def _construct(path: str, settings: Mapping[str, Any]) -> Any:
        lc = _lc()
        kv = KV_CACHE_TYPES[settings["kv_cache_type"]]
        return lc.Llama(model_path=path, n_ctx=settings["n_ctx"], n_batch=settings["n_batch"],
                        n_ubatch=settings["n_batch"], n_threads=settings["threads"],
                        n_threads_batch=settings["threads"], n_gpu_layers=settings["n_gpu_layers"],
                        use_mmap=settings["use_mmap"], logits_all=False, type_k=kv, type_v=kv,
                        flash_attn=kv not in (KV_CACHE_TYPES["f16"], KV_CACHE_TYPES["f32"]), verbose=False)

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("tokens", ("batch", "sequence"), "int32")]

    # ----------------------------------------------------------------------- evaluation

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Logits float32 [batch, n, vocab]: each row evaluated from an empty context (this also ends the
        running ``decode_step`` context, which restarts at its next step)."""
        tokens = self._checked(feeds["tokens"])
        batch, n = tokens.shape
        out = np.empty((batch, n, self._n_vocab), dtype=np.float32)
        get_logits, ctx = _lc().llama_get_logits, self._llm.ctx
        for row in range(batch):
            self._clear()
            for start in range(0, n, self._n_batch):
                chunk = tokens[row, start:start + self._n_batch]
                self._decode(chunk, start, all_logits=True)
                out[row, start:start + len(chunk)] = np.ctypeslib.as_array(
                    get_logits(ctx), shape=(len(chunk), self._n_vocab))
        self._pos = 0
        return [out]

    def prefill(self, tokens: np.ndarray) -> int:
        """Evaluate a prompt from an empty context in ``n_batch`` chunks, computing only the last position's
        logits (as a deployment does), and return the greedy next token; ``decode_step`` continues after it."""
        prompt = self._checked(np.asarray(tokens, dtype=np.int32).reshape(1, -1))[0]
        self._clear()
        for start in range(0, len(prompt), self._n_batch):
            self._decode(prompt[start:start + self._n_batch], start, all_logits=False)
        self._pos = len(prompt)
        return int(np.argmax(np.ctypeslib.as_array(_lc().llama_get_logits_ith(self._llm.ctx, -1),
                                                   shape=(self._n_vocab,))))

    def decode_step(self, token: int) -> None:
        """Append one token to the running context and compute its next-token logits (``last_logits()``)."""
        if not 0 <= token < self._n_vocab:
            raise ModelError(f"token id {token} is outside the vocabulary (0..{self._n_vocab - 1})")
        if self._pos == 0 or self._pos >= self._n_ctx:
            self._clear()
        assert self._batch is not None
        self._batch.tokens[0], self._batch.pos[0], self._batch.logits[0] = token, self._pos, 1
        self._batch.batch.n_tokens = 1
        self._run_batch()
        self._pos += 1

    def last_logits(self) -> np.ndarray:
        """The next-token logits [vocab] of the last evaluated position (a copy)."""
        return np.array(np.ctypeslib.as_array(_lc().llama_get_logits_ith(self._llm.ctx, -1),
                                              shape=(self._n_vocab,)), dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]

    def special_tokens(self) -> dict[str, Any]:
        """BOS/EOS as the GGUF's own metadata asks (``tokenizer.ggml.add_bos_token`` / ``add_eos_token``, read
        through llama.cpp's vocabulary, which applies the architecture's default when the key is absent)."""
        lc = _lc()
        vocab = lc.llama_model_get_vocab(self._llm.model)
        metadata = dict(self._llm.metadata)
        said = {k: metadata.get(f"tokenizer.ggml.{k}_token") for k in ("add_bos", "add_eos")}
        return {"add_bos": bool(lc.llama_vocab_get_add_bos(vocab)), "bos": int(lc.llama_vocab_bos(vocab)),
                "add_eos": bool(lc.llama_vocab_get_add_eos(vocab)), "eos": int(lc.llama_vocab_eos(vocab)),
                "source": "GGUF " + ", ".join(f"tokenizer.ggml.{k}_token = {v}" if v is not None
                                               else f"tokenizer.ggml.{k}_token absent (llama.cpp's default)"
                                               for k, v in said.items())}

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._llm.detokenize(list(tokens)).decode("utf-8", "replace"))

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        return checked_tokens(tokens, self._n_ctx, self._n_vocab,
                              "raise options.n_ctx to at least {n} (memory grows with it)")

    def _clear(self) -> None:
        lc = _lc()
        lc.llama_memory_clear(lc.llama_get_memory(self._llm.ctx), True)
        self._pos = 0

    def _decode(self, tokens: np.ndarray, start: int, all_logits: bool) -> None:
        assert self._batch is not None
        self._batch.fill(tokens, start, all_logits)
        self._run_batch()

    def _run_batch(self) -> None:
        assert self._batch is not None
        code = _lc().llama_decode(self._llm.ctx, self._batch.batch)
        if code != 0:
            raise ModelError(f"llama_decode returned {code} ({'no room in the KV cache' if code == 1 else 'error'})",
                             hint="raise options.n_ctx, or lower options.n_batch")

    # ----------------------------------------------------------------------- reporting

    def executed_device(self) -> str:
        offloaded, total = self._offload_counts()
        return f"GPU ({offloaded} of {total} layers offloaded)" if offloaded else "CPU"

    def _offload_counts(self) -> tuple[int, int]:
        """(offloaded, total) layers: llama.cpp's own report, else what was asked, where this build can offload."""
        if self._offload is not None:
            return self._offload
        total = int(_lc().llama_model_n_layer(self._llm.model)) + 1  # the output layer counts as one
        asked = self.settings()["n_gpu_layers"]
        wanted = total if asked == -1 else min(asked, total)
        return (wanted if _lc().llama_supports_gpu_offload() else 0), total

    def info(self) -> dict[str, Any]:
        lc, ctx = _lc(), self._llm.ctx
        settings = self.settings()
        offloaded, total = self._offload_counts()
        return {
            "framework": "llama.cpp", "version": lc.__version__,
            "llama_cpp_version": lc.llama_version().decode() if hasattr(lc, "llama_version") else "unknown",
            "system_info": system_info(), "devices": ggml_devices(), "device": "gpu" if offloaded else "cpu",
            "n_ctx": self._n_ctx, "n_ctx_allocated": int(lc.llama_n_ctx(ctx)), "n_batch": self._n_batch,
            "n_ubatch": int(lc.llama_n_ubatch(ctx)),
            "threads": int(lc.llama_n_threads(ctx)), "threads_batch": int(lc.llama_n_threads_batch(ctx)),
            "use_mmap": settings["use_mmap"], "kv_cache_type": settings["kv_cache_type"],
            "gpu_offload_supported": bool(lc.llama_supports_gpu_offload()),
            "n_gpu_layers_requested": settings["n_gpu_layers"], "n_gpu_layers_effective": offloaded,
            "n_layers_offloadable": total, "model": self._model_info(), "buffers": dict(self._buffers),
        }

    def _model_info(self) -> dict[str, Any]:
        lc, model = _lc(), self._llm.model
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(model, desc, len(desc))
        metadata = dict(self._llm.metadata)
        return {
            "architecture": metadata.get("general.architecture", "unknown"), "name": metadata.get("general.name"),
            "description": desc.value.decode("utf-8", "replace"), "file_type": ftype_name(lc.llama_model_ftype(model)),
            "n_params": int(lc.llama_model_n_params(model)), "size_bytes": int(lc.llama_model_size(model)),
            "n_vocab": self._n_vocab, "n_layer": int(lc.llama_model_n_layer(model)),
            "n_embd": int(lc.llama_model_n_embd(model)), "n_ctx_train": int(lc.llama_model_n_ctx_train(model)),
        }

    def close(self) -> None:
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        self._log.stop()
