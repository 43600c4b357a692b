"""The measurement worker: one fresh process per model, driven over a pipe by ``WorkerClient``.

Run as ``python -m certify.measure.worker``. Requests and answers are length-prefixed pickles on
stdin / a private copy of stdout; the real stdout is pointed at stderr so framework prints cannot
corrupt the protocol. Errors come back as (type, message, hint), never as a framework traceback.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import sys
import time
from typing import IO, Any

import numpy as np

from certify.errors import CertifyError, ModelError
from certify.measure import memory

HEADER = struct.Struct("<Q")


def write_message(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_message(stream: IO[bytes]) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return pickle.loads(stream.read(size))


class Worker:
    """Holds one loaded model and answers ``cmd_*`` requests."""

    def __init__(self) -> None:
        self.backend: Any = None
        self.feeds: dict[str, dict[str, np.ndarray]] = {}
        self.rss_before = 0
        self.peak_reset = False

    def cmd_load(self, ref: Any) -> dict[str, Any]:
        from certify.backends import resolve_backend

        t0 = time.perf_counter()
        cls = resolve_backend(ref.framework)
        prepare = getattr(cls, "prepare", None)  # optional: imports only some models need (mlx-lm folders)
        if prepare is not None:
            prepare(ref)
        import_s = time.perf_counter() - t0
        gc.collect()
        self.peak_reset = memory.reset_peak()
        self.rss_before = memory.rss_bytes()
        t1 = time.perf_counter()
        self.backend = cls(ref)
        self.backend.load()
        return {"import_s": import_s, "load_s": time.perf_counter() - t1, "info": self.backend.info(),
                "executed_device": self.backend.executed_device(), "rss_before": self.rss_before,
                "inputs": [vars(s) for s in self.backend.input_specs()]}

    def cmd_feeds(self, key: str, arrays: dict[str, np.ndarray]) -> dict[str, list[int]]:
        from certify.backends.base import prepare_feeds

        self.feeds[key] = prepare_feeds(self.backend.input_specs(), arrays)
        return {name: list(a.shape) for name, a in self.feeds[key].items()}

    def cmd_run(self, key: str, iterations: int, rewarm: int = 0, mode: str = "infer") -> np.ndarray:
        """The timed loop: only the inference call sits between the two clock reads.

        ``rewarm`` untimed iterations first bring the model back into cache after another process ran.
        ``mode = "decode"`` (language models): each iteration generates one token, fed from the speed input's
        tokens in turn (the same tokens for baseline and candidate). ``mode = "prompt"``: each iteration processes
        one prompt (a row of the speed input, in turn) from an empty context up to its first generated token.
        """
        if mode == "decode":
            return self._decode_run(key, iterations, rewarm)
        if mode == "prompt":
            return self._prompt_run(key, iterations, rewarm)
        feeds, infer, clock = self.feeds[key], self.backend.infer, time.perf_counter_ns
        for _ in range(rewarm):
            infer(feeds)
        times = np.empty(iterations, dtype=np.int64)
        for i in range(iterations):
            start = clock()
            infer(feeds)
            times[i] = clock() - start
        return times

    def _decode_run(self, key: str, iterations: int, rewarm: int) -> np.ndarray:
        tokens = [int(t) for t in self.feeds[key]["tokens"].reshape(-1)]
        return _timed_steps(self.backend.decode_step, tokens, iterations, rewarm)

    def _prompt_run(self, key: str, iterations: int, rewarm: int) -> np.ndarray:
        prompts = [np.ascontiguousarray(row) for row in self.feeds[key]["tokens"]]
        return _timed_steps(self.backend.prefill, prompts, iterations, rewarm)

    def cmd_tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.backend.tokenize(text)]

    def cmd_predict(self, key: str, batch_size: int) -> np.ndarray:
        """Run the whole dataset in batches; return the first output, concatenated."""
        feeds = self.feeds[key]
        n = next(iter(feeds.values())).shape[0]
        parts = []
        for start in range(0, n, batch_size):
            batch = {name: a[start:start + batch_size] for name, a in feeds.items()}
            parts.append(np.asarray(self.backend.infer(batch)[0]))
        if not parts:
            raise ModelError("the dataset is empty: nothing to evaluate")
        return np.concatenate(parts, axis=0)

    def cmd_memory(self) -> dict[str, Any]:
        """The peak and current resident set, and how much of the current one is the model's own files mapped.
        Both are read first: finding the model's files may import onnx and parse the model (30 MB or more for
        the demo's FP32 model), which is the harness's memory, not the model's."""
        peak, now = memory.peak_bytes(), memory.rss_bytes()
        from certify.digests import model_files

        files = {os.path.realpath(f) for f in model_files(self.backend.ref.file)} if self.backend else set()
        return {"rss_before": self.rss_before, "peak": peak, "rss_now": now, "peak_reset": self.peak_reset,
                "mapped_model": memory.mapped_bytes(files)}

    def cmd_exit(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _timed_steps(step: Any, inputs: list[Any], iterations: int, rewarm: int) -> np.ndarray:
    """Time ``step(x)`` for each iteration, ``x`` taken from ``inputs`` in turn (the same sequence on both sides of
    a paired run), after ``rewarm`` untimed steps; only the call sits between the clock reads."""
    clock = time.perf_counter_ns
    for i in range(rewarm):
        step(inputs[i % len(inputs)])
    times = np.empty(iterations, dtype=np.int64)
    for i in range(iterations):
        x = inputs[i % len(inputs)]
        start = clock()
        step(x)
        times[i] = clock() - start
    return times


# The commands that run next to the loaded model on behalf of a gate, each ``function(worker, **args)`` in a measure
# module, imported on first use: the stress load generator, the robustness probes, an injected fault.
IN_WORKER: dict[str, str] = {
    "serve_load": "certify.measure.load:serve",
    "probe": "certify.measure.probes:probe",
    "serve_valid": "certify.measure.probes:serve",
    "fail_next_infer": "certify.measure.probes:fail_next_infer",
}


def command(worker: Worker, name: str) -> Any:
    """The callable for request ``name``: a ``cmd_*`` method, or an ``IN_WORKER`` function bound to the worker."""
    if name in IN_WORKER:
        import functools
        import importlib

        module, _, function = IN_WORKER[name].partition(":")
        return functools.partial(getattr(importlib.import_module(module), function), worker)
    method = getattr(worker, "cmd_" + name, None)
    if method is None:
        raise CertifyError(f"unknown worker command {name!r}",
                           hint=f"known: {', '.join(sorted([*IN_WORKER, *WORKER_COMMANDS]))}")
    return method


WORKER_COMMANDS = tuple(n[4:] for n in dir(Worker) if n.startswith("cmd_"))
MEMORY_LIMIT_ENV = "CERTIFY_WORKER_MEMORY_LIMIT_MIB"


def limit_memory() -> int:
    """Apply ``$CERTIFY_WORKER_MEMORY_LIMIT_MIB`` (the plan's ``measure.memory_limit_mib``) as this process's
    RLIMIT_DATA, which bounds heap and private anonymous memory (not mapped files), so a runaway model fails its
    case with MemoryError instead of drawing the host's out-of-memory killer. Returns the limit in MiB (0 none)."""
    mib = int(os.environ.get(MEMORY_LIMIT_ENV, "0") or 0)
    if mib > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (mib * 1024 * 1024, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    return mib


def _answer(worker: Worker, request: tuple[str, dict[str, Any]]) -> tuple[Any, ...]:
    name, args = request
    try:
        return ("ok", command(worker, name)(**args))
    except CertifyError as exc:
        return ("error", type(exc).__name__, exc.message, exc.hint)
    except MemoryError:
        limit = os.environ.get(MEMORY_LIMIT_ENV, "0")
        where = f"the worker's limit of {limit} MiB (measure.memory_limit_mib)" if limit != "0" else "memory"
        return ("error", "ModelError", f"{name} ran out of memory: it exceeded {where}",
                "raise measure.memory_limit_mib if the model legitimately needs more, else fix the leak or "
                "use a smaller batch")
    except Exception as exc:  # report the cause in one line, the session goes on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return ("error", "ModelError", f"{name} failed: {type(exc).__name__}: {first}", "")


def main() -> None:
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    limit_memory()
    worker = Worker()
    while (request := read_message(requests)) is not None:
        write_message(channel, _answer(worker, request))
        if request[0] == "exit":
            break


if __name__ == "__main__":
    main()
