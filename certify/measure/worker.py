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

from certify.errors import CertifyError, ModelError, first_line
from certify.measure import batching, logprobs, memory
from certify.measure.arrays import BoardArray
from certify.plan.types import Layout

HEADER = struct.Struct("<Q")


def _resolved(value: Any) -> Any:
    """A request argument with every ``BoardArray`` (alone, or a value of a dict of arrays) read from its file."""
    if isinstance(value, BoardArray):
        return value.load()
    if isinstance(value, dict) and any(isinstance(v, BoardArray) for v in value.values()):
        return {k: v.load() if isinstance(v, BoardArray) else v for k, v in value.items()}
    return value


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
        self.layout = Layout()

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
        self.layout = ref.layout
        return {"import_s": import_s, "load_s": time.perf_counter() - t1, "info": self.backend.info(),
                "executed_device": self.backend.executed_device(), "rss_before": self.rss_before,
                "inputs": [vars(s) for s in self.backend.input_specs()]}

    def cmd_feeds(self, key: str, arrays: dict[str, np.ndarray], whole: bool = False) -> dict[str, list[int]]:
        """Prepare and keep arrays as the feeds ``key``: a served request, or (``whole``) a whole dataset that
        ``predict`` will batch."""
        from certify.backends.base import prepare_feeds

        self.feeds[key] = prepare_feeds(self.backend.input_specs(), arrays, self.layout, whole=whole)
        return {name: list(a.shape) for name, a in self.feeds[key].items()}

    def output_names(self) -> list[str]:
        """The model's output names, in ``infer``'s order (``output0``... for a backend that names none)."""
        names = getattr(self.backend, "output_names", None)
        return list(names()) if names is not None else []

    def _carry(self) -> list[tuple[int, str]]:
        """(output position, input name) of each output a streaming model feeds back."""
        names = self.output_names()
        pairs = []
        for output, fed in self.layout.carry:
            if output not in names:
                raise ModelError(f"[models.stream] carry names output {output!r}, which the model does not have "
                                 f"(its outputs: {', '.join(names) or 'unnamed'})", hint="name one of its outputs")
            pairs.append((names.index(output), fed))
        return pairs

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
        if self.layout.carry:
            return self._stream_run(key, iterations, rewarm)
        feeds, infer, clock = self.feeds[key], self.backend.infer, time.perf_counter_ns
        for _ in range(rewarm):
            infer(feeds)
        times = np.empty(iterations, dtype=np.int64)
        for i in range(iterations):
            start = clock()
            infer(feeds)
            times[i] = clock() - start
        return times

    def _stream_run(self, key: str, iterations: int, rewarm: int) -> np.ndarray:
        """A streaming model: each iteration is one chunk step, its carried outputs fed to the next (outside the
        clock reads, as a deployment would hand the state over)."""
        feeds, infer, clock, carry = dict(self.feeds[key]), self.backend.infer, time.perf_counter_ns, self._carry()
        times = np.empty(iterations, dtype=np.int64)
        for i in range(rewarm + iterations):
            start = clock()
            outputs = infer(feeds)
            if i >= rewarm:
                times[i - rewarm] = clock() - start
            for position, fed in carry:
                feeds[fed] = outputs[position]
        return times

    def _decode_run(self, key: str, iterations: int, rewarm: int) -> np.ndarray:
        tokens = [int(t) for t in self.feeds[key]["tokens"].reshape(-1)]
        return _timed_steps(self.backend.decode_step, tokens, iterations, rewarm)

    def _prompt_run(self, key: str, iterations: int, rewarm: int) -> np.ndarray:
        prompts = [np.ascontiguousarray(row) for row in self.feeds[key]["tokens"]]
        return _timed_steps(self.backend.prefill, prompts, iterations, rewarm)

    def cmd_tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.backend.tokenize(text)]

    def cmd_text_tokens(self, text: str) -> dict[str, Any]:
        """The text's token ids and the BOS/EOS the model's metadata asks for (``special_tokens``)."""
        return {"tokens": self.cmd_tokenize(text), "special": dict(self.backend.special_tokens())}

    def cmd_detokenize(self, tokens: list[int]) -> str:
        return str(self.backend.detokenize([int(t) for t in tokens]))

    def cmd_predict(self, key: str, batch_size: int, tokens: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the whole dataset (feeds ``key``, prepared with ``whole``) in batches along each input's batch axis;
        return the scored output(s) with samples first, and how the batches were made. ``tokens`` (a language
        model: ``labels``, the next tokens, and ``ids``, the baseline's kept token ids or None for the baseline)
        turns each batch's logits into compact records here (``certify.measure.logprobs``).

        A model that fixes its batch size runs in batches of that size, the last one padded by repeating its last
        sample (the pad's outputs are dropped). A streaming model runs each batch of sequences chunk by chunk,
        carrying its state; its outputs gain a chunk axis after their batch axis."""
        feeds, layout = self.feeds[key], self.layout
        specs = self.backend.input_specs()
        n = batching.samples(layout, {k: v for k, v in feeds.items() if k not in layout.constants()})
        fixed = batching.fixed_batch(layout, specs)
        step = fixed or batch_size
        names, parts, padded = self.output_names(), [], 0
        for start in range(0, n, step):
            index = np.arange(start, min(start + step, n))
            real = len(index)
            if fixed and real < fixed:
                index = np.concatenate([index, np.full(fixed - real, index[-1])])
                padded += fixed - real
            batch = batching.select(layout, feeds, index)
            outputs = self._stream(batch) if layout.carry else [np.asarray(o) for o in self.backend.infer(batch)]
            if tokens is not None:
                kept = index[:real]
                ids = None if tokens["ids"] is None else np.asarray(tokens["ids"])[kept]
                outputs = [logprobs.token_scores(outputs[0][:real], np.asarray(tokens["labels"])[kept], ids)]
            names = names or [f"output{i}" for i in range(len(outputs))]
            parts.append([batching.rows(o, batching.output_axis(layout, name), slice(0, real))
                          for name, o in zip(names, outputs, strict=True)])
        if not parts:
            raise ModelError("the dataset is empty: nothing to evaluate")
        joined = batching.join(layout, names, parts)
        return {"scored": batching.scored_array(layout, names, joined),
                "batching": {"samples": n, "batch_size": step, "fixed_batch": fixed, "padded": padded,
                             "streamed": bool(layout.carry), "outputs": names,
                             "scored": [names[i] for i in batching.scored(layout, names)]}}

    def _stream(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One batch of sequences, chunk after chunk, each call's carried outputs fed to the next call."""
        carry, layout, names = self._carry(), self.layout, self.output_names()
        steps = []
        state = {fed: batch[fed] for _, fed in carry}
        for c in range(batching.chunk_count(layout, batch)):
            outputs = [np.asarray(o) for o in self.backend.infer({**batching.chunk(layout, batch, c), **state})]
            state = {fed: outputs[position] for position, fed in carry}
            steps.append(outputs)
        return [np.stack([s[i] for s in steps], axis=int(batching.output_axis(layout, name) or 0) + 1)
                for i, name in enumerate(names or [f"output{i}" for i in range(len(steps[0]))])]

    def cmd_memory(self) -> dict[str, Any]:
        """The peak and current resident set, and how much of the current one is the model's own files mapped.
        Both are read first: finding the model's files may import onnx and parse the model (30 MB or more for
        the demo's FP32 model), which is the harness's memory, not the model's."""
        peak, now = memory.peak_bytes(), memory.rss_bytes()
        from certify.digests import model_files

        files = {os.path.realpath(f) for f in model_files(self.backend.ref.file)} if self.backend else set()
        return {"rss_before": self.rss_before, "peak": peak, "rss_now": now, "peak_reset": self.peak_reset,
                "mapped_model": memory.mapped_bytes(files)}

    def cmd_host(self) -> dict[str, Any]:
        """The machine this worker runs on, detected here (on a board, the board's): its ``Host`` (markers,
        fingerprint), package versions by distribution name, the Python and the harness code that answer."""
        import platform

        import certify
        from certify.environment import package_versions
        from certify.hardware import detect_host

        return {"host": detect_host(), "packages": package_versions(everything=False),
                "python": sys.executable, "python_version": platform.python_version(),
                "harness": os.path.dirname(certify.__file__)}

    def cmd_settle(self, measure: Any, confidence: float) -> dict[str, Any]:
        """This machine's noise preflight, waited on as the plan's ``measure.noise`` says (a board's, in a lab)."""
        from certify.measure import preflight

        return preflight.settle(measure, confidence)

    def cmd_preflight(self, measure: Any, confidence: float) -> dict[str, Any]:
        """One noise preflight of this machine (``preflight.run_preflight``)."""
        from certify.measure import preflight

        return preflight.run_preflight(measure.noise, confidence)

    def cmd_can_run(self, ref: Any) -> str:
        """'' when ``ref`` can run on this machine, else why not (``certify.backends.cannot_run``): how a board is
        asked."""
        from certify.backends import cannot_run

        return cannot_run(ref)

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
        return ("ok", command(worker, name)(**{k: _resolved(v) for k, v in args.items()}))
    except CertifyError as exc:
        return ("error", type(exc).__name__, exc.message, exc.hint)
    except MemoryError:
        limit = os.environ.get(MEMORY_LIMIT_ENV, "0")
        where = f"the worker's limit of {limit} MiB (measure.memory_limit_mib)" if limit != "0" else "memory"
        return ("error", "ModelError", f"{name} ran out of memory: it exceeded {where}",
                "raise measure.memory_limit_mib if the model legitimately needs more, else fix the leak or "
                "use a smaller batch")
    except Exception as exc:  # report the cause in one line, the session goes on
        return ("error", "ModelError", f"{name} failed: {type(exc).__name__}: {first_line(str(exc))}", "")


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
