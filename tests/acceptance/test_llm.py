"""A language model certified for real: a tiny trained LLaMA (GGUF, llama.cpp) and quantizations of it made by
recipes, judged on token agreement with fidelity statistics, on generation tokens/s and on memory."""

from __future__ import annotations

import shutil

import pytest

from tests.acceptance.conftest import Outcome, run_certification, timed

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")

PLAN = """
name = "tiny-llm"
[measure]
warmup_iterations = 5
min_iterations = 50
max_iterations = 4000
min_duration_s = 0.5
max_duration_s = 2.0
memory_repeats = 1
bootstrap_resamples = 300
threads = 1

[[models]]
name = "tiny-llama"
[models.dataset]
text = "eval.txt"
context = 64
chunks = 6
[models.baseline]
name = "f32"
path = "tiny-llama-f32.gguf"
framework = "llamacpp"

[[models.candidates]]
name = "q8"
framework = "llamacpp"
recipe = { tool = "llamacpp", method = "quantize", type = "Q8_0" }

[[models.candidates]]
name = "q8-mmap"
framework = "llamacpp"
recipe = { tool = "llamacpp", method = "quantize", type = "Q8_0" }
options = { use_mmap = true }

[[models.candidates]]
name = "q2"
framework = "llamacpp"
recipe = { tool = "llamacpp", method = "quantize", type = "Q2_K" }

[[models.candidates]]
name = "truncated"
path = "truncated.gguf"
framework = "llamacpp"
"""


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from certify.fixtures import tinyllama

    from tests.helpers.tinyllama import truncated

    folder = tmp_path_factory.mktemp("llm")
    built = tinyllama.ensure_built()  # the fully trained fixture (about 2 min once, then cached)
    for name in ("tiny-llama-f32.gguf", "eval.txt"):
        shutil.copyfile(built / name, folder / name)
    truncated(folder / "tiny-llama-f32.gguf", folder / "truncated.gguf")
    (folder / "certify.toml").write_text(PLAN)
    return run_certification(folder, folder / "certify.toml", env={"CERTIFY_CACHE_DIR": str(folder / "cache")})


def record(outcome: Outcome, candidate: str, gate: str) -> dict:
    return next(r for r in outcome.evidence() if r["candidate"] == candidate and r["gate"] == gate)


def test_fidelity_is_graded_and_the_aggressive_quantization_fails(llm_run: Outcome) -> None:
    v = llm_run.verdicts()
    assert v[("q8", "accuracy")]["verdict"] == "pass", v[("q8", "accuracy")]
    assert v[("q2", "accuracy")]["verdict"] == "fail", v[("q2", "accuracy")]
    assert "token_agreement retention" in v[("q2", "accuracy")]["reason"]
    q8, q2 = (record(llm_run, c, "accuracy")["measurement"]["fidelity"] for c in ("q8", "q2"))
    assert q8["kl_divergence"]["mean"] < q2["kl_divergence"]["mean"]
    assert q8["top1_agreement"]["mean"] > q2["top1_agreement"]["mean"]
    ppl = q8["perplexity"]  # not asserted to grade: a low-bit quant can even lower an undertrained model's ppl
    assert ppl["ratio"] == pytest.approx(ppl["candidate"] / ppl["baseline"]) and abs(ppl["ratio"] - 1) < 0.01
    for key in ("median", "p90", "p99", "max", "stderr"):
        assert key in q8["kl_divergence"]
    assert q8["tokens"] == 6 * 64


def test_generation_speed_is_paired_and_reported_in_tokens_per_second(llm_run: Outcome) -> None:
    speed = llm_run.verdicts()[("q8", "speed")]
    assert timed(speed) in ("pass", "fail", "not_judged") and "tokens/s" in speed["reason"]
    assert speed["details"]["candidate_tokens_per_s"] > 0
    m = record(llm_run, "q8", "speed")["measurement"]
    assert m["mode"] == "decode" and m["order"] == "ABBA" and len(m["baseline_ns"]) == len(m["candidate_ns"])
    lm = m["language_model"]  # prompt processing was timed too, paired the same way, and time to first token
    assert lm["prompt_tokens"] == 64 and lm["prompt_speedup"]["samples"] > 0
    for side in ("baseline", "candidate"):
        figures = lm[side]
        assert figures["prompt_tokens_per_s"] > figures["generation_tokens_per_s"] > 0  # batched beats one by one
        assert figures["time_to_first_token_ms"]["p50"] == pytest.approx(64_000 / figures["prompt_tokens_per_s"])
    assert "prompt processing" in speed["reason"] and "time to first token" in speed["reason"]


def test_memory_counts_the_weights_and_a_broken_gguf_fails_alone(llm_run: Outcome) -> None:
    v = llm_run.verdicts()
    memory = record(llm_run, "q8", "memory")["measurement"]
    assert memory["candidate"]["model_bytes"] < memory["baseline"]["model_bytes"]
    assert memory["candidate"]["file_bytes"] < memory["baseline"]["file_bytes"]
    assert memory["candidate"]["mapped_model_bytes"] < 0.01 * memory["candidate"]["file_bytes"]  # mmap off
    mapped = record(llm_run, "q8-mmap", "memory")["measurement"]["candidate"]
    assert mapped["mapped_model_bytes"] >= 0.9 * mapped["file_bytes"]  # the weights are the file's pages: counted
    assert mapped["model_bytes_without_mapped"] == mapped["model_bytes"] - mapped["mapped_model_bytes"] > 0
    assert "mapped" in v[("q8-mmap", "memory")]["reason"]
    broken = v[("truncated", "accuracy")]
    assert broken["verdict"] == "fail" and "truncated.gguf" in broken["reason"] and "Traceback" not in broken["reason"]
    made = record(llm_run, "q8", "accuracy")["made_by"]
    assert made["recipe"]["params"] == {"type": "Q8_0"} and made["versions"]["llama-cpp-python"]
