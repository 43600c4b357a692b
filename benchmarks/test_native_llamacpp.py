"""Fidelity against a bare llama-cpp-python loop: generation and prompt-processing tokens/s on the tiny LLaMA.

Model: the tiny LLaMA fixture (``certify.fixtures.tinyllama``, 4 layers, n_embd 256, vocabulary 260) quantized to
Q8_0. Same settings on every side: 1 thread for generation and prompts, n_ctx 256, n_batch = n_ubatch 256, f16 KV
cache, no mmap, no GPU layers; the settings in force are read back from each llama.cpp context and must agree.

Arms, interleaved in rounds (A B C / C B A) so machine drift hits all alike:

- ``harness``: a ``WorkerClient`` worker process, ``run`` with ``mode="decode"`` (one timed iteration = one token
  appended to the context; a block of n_ctx tokens covers positions 0..n_ctx-1) and ``mode="prompt"`` (one timed
  iteration = a 128-token prompt from an empty context up to its greedy next token);
- ``llama_eval``: in this process, ``Llama.eval([token])`` token by token after ``Llama.reset()`` (the public
  high-level API a generation loop uses), and ``reset()`` + ``Llama.eval(prompt)`` + argmax of the last logits;
- ``llama_decode``: in this process, ``llama_decode`` of ``llama_batch_get_one`` (1 token, or the whole prompt)
  after ``llama_memory_clear``: the C API that llama.cpp's own tools call, with nothing around it.

tokens/s are taken at the median like the harness's ``language_model_figures`` (generation 1000 / p50 ms,
prompt processing prompt_tokens * 1000 / p50 ms); the mean-based rate is reported too.
Writes ``reports/benchmarks/native_llamacpp.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bench_support as bs
import numpy as np
import pytest

from certify.measure.client import WorkerClient
from certify.plan import ModelRef

pytest.importorskip("llama_cpp")
THREADS, N_CTX, N_BATCH = 1, 256, 256
PROMPT_TOKENS, PROMPTS = 128, 4
DECODE_ROUNDS, PROMPT_ROUNDS = 24, 24


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """llama.cpp's quantizer logs every tensor to fd 2: keep the benchmark's output readable."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@pytest.fixture(scope="module")
def tiny_llama_q8(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRef, np.ndarray]:
    """The Q8_0 model (quantized from the fixture's F32 GGUF) as a plan reference, and tokens of its held-out text."""
    import llama_cpp
    from certify.fixtures import tinyllama

    folder = tinyllama.ensure_built(steps=24)  # the test suite's short build: speed does not depend on training
    out = tmp_path_factory.mktemp("llamacpp") / "tiny-llama-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    with quiet_stderr():
        code = llama_cpp.llama_model_quantize(str(folder / tinyllama.MODEL_FILE).encode(), str(out).encode(),
                                              ctypes.byref(params))
    assert code == 0, f"llama_model_quantize Q8_0 returned {code}"
    tokens = tinyllama.encode((folder / tinyllama.EVAL_FILE).read_text(encoding="utf-8"))
    ref = ModelRef(name="tiny-llama-q8_0", path=out, framework="llamacpp", device="cpu", threads=THREADS,
                   options=(("n_ctx", N_CTX), ("n_batch", N_BATCH)))
    return ref, tokens[: PROMPTS * PROMPT_TOKENS].astype(np.int32)


class BareLlama:
    """The same model and settings in this process, driven with llama-cpp-python's public API only."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH,
                                   n_threads=THREADS, n_threads_batch=THREADS, n_gpu_layers=0, use_mmap=False,
                                   logits_all=False, verbose=False)
        self.ctx, self.n_vocab = self.llm.ctx, self.llm.n_vocab()
        self.memory = llama_cpp.llama_get_memory(self.ctx)

    def settings(self) -> dict[str, Any]:
        lc, ctx = self.lc, self.ctx
        return {"n_ctx": int(lc.llama_n_ctx(ctx)), "n_batch": int(lc.llama_n_batch(ctx)),
                "n_ubatch": int(lc.llama_n_ubatch(ctx)), "threads": int(lc.llama_n_threads(ctx)),
                "threads_batch": int(lc.llama_n_threads_batch(ctx))}

    def next_token(self) -> int:
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        return int(np.argmax(logits))

    def eval_decode(self, tokens: np.ndarray) -> np.ndarray:
        self.llm.reset()
        ids = iter([[int(t)] for t in tokens])
        return bs.timed_loop(lambda: self.llm.eval(next(ids)), len(tokens))

    def eval_prompts(self, prompts: np.ndarray) -> np.ndarray:
        rows = iter([[int(t) for t in row] for row in prompts])

        def one() -> int:
            self.llm.reset()
            self.llm.eval(next(rows))
            return self.next_token()

        return bs.timed_loop(one, len(prompts))

    def raw_decode(self, tokens: np.ndarray) -> np.ndarray:
        lc, ctx = self.lc, self.ctx
        self.lc.llama_memory_clear(self.memory, True)
        arrays = [(lc.llama_token * 1)(int(t)) for t in tokens]  # built outside the timed calls
        batches = iter([lc.llama_batch_get_one(a, 1) for a in arrays])
        return bs.timed_loop(lambda: self._check(lc.llama_decode(ctx, next(batches))), len(arrays))

    def raw_prompts(self, prompts: np.ndarray) -> np.ndarray:
        lc, ctx = self.lc, self.ctx
        arrays = [(lc.llama_token * len(row))(*[int(t) for t in row]) for row in prompts]
        batches = iter([lc.llama_batch_get_one(a, len(a)) for a in arrays])

        def one() -> int:
            lc.llama_memory_clear(self.memory, True)
            self._check(lc.llama_decode(ctx, next(batches)))
            return self.next_token()

        return bs.timed_loop(one, len(arrays))

    @staticmethod
    def _check(code: int) -> None:
        assert code == 0, f"llama_decode returned {code}"

    def close(self) -> None:
        self.llm.close()


def rates(blocks: list[np.ndarray], tokens_per_iteration: int) -> dict[str, Any]:
    """ms per iteration at the median and tokens/s the harness's way (at the median), plus the mean-based rate."""
    figures = bs.latency_figures(blocks, per_call=tokens_per_iteration)
    return {"median_ms": figures["median_ms"], "tokens_per_s": tokens_per_iteration * 1000.0 / figures["median_ms"],
            "tokens_per_s_mean_based": figures["throughput_per_s"], "block_medians_ms": figures["block_medians_ms"],
            "samples": figures["samples"]}


def comparison(harness: dict[str, Any], native: dict[str, Any]) -> dict[str, Any]:
    return {"tokens_per_s": bs.ratio(harness["tokens_per_s"], native["tokens_per_s"]),
            "tokens_per_s_mean_based": bs.ratio(harness["tokens_per_s_mean_based"], native["tokens_per_s_mean_based"]),
            "quiet_blocks_tokens_per_s": bs.ratio(bs.quiet_ms(native["block_medians_ms"]),
                                                  bs.quiet_ms(harness["block_medians_ms"])),
            "per_round_latency": bs.block_ratios(harness["block_medians_ms"], native["block_medians_ms"])}


def summary(what: str, part: dict[str, Any]) -> str:
    ratios = [part["ratio"][f"harness_vs_{name}"]["tokens_per_s"]["ratio"] for name in ("llama_decode", "llama_eval")]
    verdicts = " / ".join(f"x{r:.4f} {bs.verdict(r)}" for r in ratios)
    return (f"{what} {part['harness']['tokens_per_s']:.0f} vs {part['llama_decode']['tokens_per_s']:.0f} / "
            f"{part['llama_eval']['tokens_per_s']:.0f} ({verdicts})")


def measure(arms: dict[str, Callable[[], np.ndarray]], rounds: int, tokens_per_iteration: int) -> dict[str, Any]:
    for arm in arms.values():  # one untimed block each: first-touch costs, caches
        arm()
    results = bs.interleave(arms, rounds)
    figures: dict[str, Any] = {name: rates(blocks, tokens_per_iteration) for name, blocks in results.items()}
    figures["ratio"] = {f"harness_vs_{name}": comparison(figures["harness"], figures[name])
                        for name in arms if name != "harness"}
    return figures


def test_harness_matches_bare_llama_cpp(tiny_llama_q8, benchmark_lock) -> None:  # type: ignore[no-untyped-def]
    load = bs.HostLoad()
    ref, tokens = tiny_llama_q8
    decode_tokens, prompts = tokens[:N_CTX], tokens.reshape(PROMPTS, PROMPT_TOKENS)
    bare = BareLlama(ref.file)
    try:
        with WorkerClient("harness", ref, timeout_s=300) as worker:
            loaded = worker.call("load", ref=ref)
            worker.call("feeds", key="decode", arrays={"tokens": decode_tokens.reshape(1, -1)})
            worker.call("feeds", key="prompts", arrays={"tokens": prompts})
            generation = measure({
                "harness": lambda: worker.call("run", key="decode", iterations=N_CTX, mode="decode"),
                "llama_eval": lambda: bare.eval_decode(decode_tokens),
                "llama_decode": lambda: bare.raw_decode(decode_tokens)}, DECODE_ROUNDS, 1)
            prompt = measure({
                "harness": lambda: worker.call("run", key="prompts", iterations=PROMPTS, mode="prompt"),
                "llama_eval": lambda: bare.eval_prompts(prompts),
                "llama_decode": lambda: bare.raw_prompts(prompts)}, PROMPT_ROUNDS, PROMPT_TOKENS)
        bare_settings = bare.settings()
    finally:
        bare.close()
    info = loaded["info"]
    harness_settings = {k: info[k] for k in ("n_batch", "n_ubatch", "threads", "threads_batch")}
    harness_settings["n_ctx"] = info["n_ctx_allocated"]
    figures = {
        "benchmark": "harness timed loop vs bare llama-cpp-python loops (Llama.eval, llama_decode)",
        "model": {"name": ref.name, **{k: info["model"][k] for k in ("file_type", "n_params", "n_layer", "n_embd",
                                                                      "n_vocab")}},
        "settings": {"harness": harness_settings, "bare": bare_settings, "kv_cache_type": info["kv_cache_type"],
                     "use_mmap": info["use_mmap"], "system_info": info["system_info"]},
        "generation": {"tokens_per_block": N_CTX, "rounds": DECODE_ROUNDS, **generation},
        "prompt_processing": {"prompt_tokens": PROMPT_TOKENS, "prompts_per_block": PROMPTS, "rounds": PROMPT_ROUNDS,
                              **prompt},
        "target": bs.RULE,
        "environment": bs.environment(benchmark_lock, load, threads=THREADS),
    }
    path = bs.write_report("native_llamacpp", figures)
    print(f"\nllama.cpp tokens/s, harness vs llama_decode / Llama.eval: {summary('generation', generation)}; "
          f"{summary('prompt', prompt)} -> {path}")
    assert harness_settings == bare_settings, f"the harness and the bare loop ran with different settings: {figures}"
    for what, part in (("generation", generation), ("prompt processing", prompt)):
        for name in ("llama_eval", "llama_decode"):
            verdict = part["ratio"][f"harness_vs_{name}"]["quiet_blocks_tokens_per_s"]
            assert verdict["within_guard"], bs.guard_message(f"{what} quiet-block tokens/s vs {name}", verdict["ratio"],
                                                              figures)
