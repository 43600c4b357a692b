"""The security gate through the real suites, on a plan that mixes good and bad candidates: each bad one fails
with its own reason while the good ones keep their passing results; a backend that writes an environment secret
into the evidence fails its security gate and stops the certificate from being signed, and neither that secret
nor the signing key appears in the report, summary or statement."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certify.digests import model_digest
from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers import unsafe_models as unsafe
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("gguf")
pytest.importorskip("torch")  # the tiny LLaMA is trained with it (cached after the first build)

REPO = str(Path(__file__).resolve().parents[2])  # the leaking backend lives in tests.helpers
TOKEN = "tok-9c1e5b7a42d8f0"

LLM = """
[[models]]
name = "llm"
[models.dataset]
text = "{eval}"
context = 32
chunks = 2
[models.baseline]
path = "{gguf}"
framework = "llamacpp"
"""


def build(folder: Path) -> Path:
    """The models of the plan, and the plan: for the ONNX MLP, good candidates (int8 pinned, the IR) and bad ones
    (a custom-op domain, escaping external data, a wrong pin, a truncated IR, a folder with a pickle, a backend that
    leaks a secret); for the tiny LLaMA, itself pinned (good), a truncated copy and an oversized chat template."""
    from tests.helpers.tinyllama import tiny_llama, truncated

    tiny_project(folder)
    unsafe.custom_domain_onnx(folder / "evil.onnx")
    unsafe.escaping_external_data(folder / "escape")
    unsafe.openvino_ir(folder / "fp32.onnx", folder / "ir" / "model.xml")
    shutil.copytree(folder / "ir", folder / "ir-cut")
    unsafe.truncate(folder / "ir-cut" / "model.bin")
    unsafe.mlx_style_folder(folder / "mlx-pickle", with_pickle=True)
    llama = tiny_llama()
    truncated(llama / "tiny-llama-f32.gguf", folder / "half.gguf")
    unsafe.gguf_with_chat_template(folder / "template.gguf", "{{ messages }}" * 8000)
    pin = f'sha256 = "{model_digest(folder / "int8.onnx").sha256}"'
    text = ('policy = { name = "edge-default", required_gates = ["security"] }  # this plan certifies files only\n'
            + PLAN + candidate("int8", "int8.onnx", extra=pin) + candidate("ir", "ir/model.xml", "openvino")
            + candidate("evil", "evil.onnx") + candidate("escape", "escape/model.onnx")
            + candidate("wrong-pin", "int8.onnx", extra=f'sha256 = "{"0" * 64}"')
            + candidate("ir-cut", "ir-cut/model.xml", "openvino") + candidate("pickle", "mlx-pickle", "mlx")
            + candidate("leaky", "int8.onnx", "tests.helpers.unsafe_models:LeaksSecretInInfo")
            + LLM.format(eval=llama / "eval.txt", gguf=llama / "tiny-llama-f32.gguf")
            + candidate("f32", str(llama / "tiny-llama-f32.gguf"), "llamacpp",
                        extra=f'sha256 = "{model_digest(llama / "tiny-llama-f32.gguf").sha256}"')
            + candidate("half", "half.gguf", "llamacpp") + candidate("template", "template.gguf", "llamacpp"))
    (folder / "certify.toml").write_text(text)
    return folder / "certify.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Outcome]:
    folder = tmp_path_factory.mktemp("security")
    plan = build(folder)
    keygen = subprocess.run([sys.executable, "-m", "certify.cli", "keygen", "--out", "keys/release.key"],
                            cwd=folder, capture_output=True, text=True, timeout=120, check=False)
    assert keygen.returncode == 0, keygen.stderr
    outcome = run_certification(folder, plan, "-k", "security or (accuracy and leaky)",
                                "--certify-sign-key", "keys/release.key",
                                env={"PYTHONPATH": REPO, "MY_API_TOKEN": TOKEN})
    return folder, outcome


def test_bad_candidates_fail_with_their_reason_and_good_ones_keep_passing(run: tuple[Path, Outcome]) -> None:
    _, outcome = run
    v = {(c, g): r for (c, g), r in outcome.verdicts().items() if g == "security"}
    assert {c for (c, _), r in v.items() if r["verdict"] == "pass"} == {"int8", "ir", "f32"}, v
    reasons = {c: r["reason"] for (c, _), r in v.items()}
    assert "custom operators from domain 'com.evil' (1 nodes: EvilOp)" in reasons["evil"]
    assert "'../outside.bin' lies outside the model's folder" in reasons["escape"]
    assert f"but the plan pins {'0' * 64}" in reasons["wrong-pin"]
    assert "model.bin is" in reasons["ir-cut"] and "truncated" in reasons["ir-cut"]
    assert "optimizer_state.pkl: pickle can run arbitrary code" in reasons["pickle"]
    assert "half.gguf" in reasons["half"] and "truncated" in reasons["half"]
    assert "tokenizer.chat_template is 109 KiB (limit 64 KiB)" in reasons["template"]
    assert "$MY_API_TOKEN in evidence.jsonl (recorded by its accuracy gate)" in reasons["leaky"]
    assert "Traceback" not in json.dumps(reasons)
    assert reasons["int8"].startswith("4 checks passed (digest (candidate), onnx operators, onnx metadata, pickle)")
    assert "warnings: secrets in outputs: evidence.jsonl holds $MY_API_TOKEN from tiny/leaky" in reasons["int8"]
    assert outcome.returncode == 1


def test_every_check_is_in_the_evidence(run: tuple[Path, Outcome]) -> None:
    _, outcome = run
    records = {r["candidate"]: r for r in outcome.evidence() if r["gate"] == "security"}
    checks = {c["name"]: c["status"] for c in records["f32"]["measurement"]["checks"]}
    assert checks == {"digest (candidate)": "pass", "gguf structure": "pass", "gguf chat template": "not_applicable",
                      "pickle": "pass", "python code": "not_applicable", "secrets in outputs": "warn"}


def test_a_leaked_secret_stops_the_signature_and_stays_out_of_the_report(run: tuple[Path, Outcome]) -> None:
    _, outcome = run
    assert not (outcome.run_dir / "certificate.json").exists()
    assert "not signed: secret found in outputs: $MY_API_TOKEN in evidence.jsonl" in outcome.stdout
    assert TOKEN in (outcome.run_dir / "evidence.jsonl").read_text()  # the raw evidence is left as it was written
    for name in ("statement.json", "report.html", "summary.md", "results.json"):
        assert TOKEN not in (outcome.run_dir / name).read_text(), name
    assert TOKEN not in outcome.stdout + outcome.stderr


def test_the_signing_key_is_in_no_output(run: tuple[Path, Outcome]) -> None:
    folder, outcome = run
    pem_body = "".join((folder / "keys" / "release.key").read_text().splitlines()[1:-1])
    for path in (p for p in outcome.run_dir.rglob("*") if p.is_file()):
        assert pem_body not in path.read_text(errors="replace"), path
    assert pem_body not in outcome.stdout + outcome.stderr


def test_without_the_leak_the_good_candidates_are_signed(run: tuple[Path, Outcome], tmp_path: Path) -> None:
    folder, _ = run
    outcome = run_certification(tmp_path, folder / "certify.toml", "-k", "security and (int8 or ir or f32) and not cut",
                                "--certify-sign-key", str(folder / "keys" / "release.key"),
                                env={"PYTHONPATH": REPO, "MY_API_TOKEN": TOKEN})
    assert outcome.returncode == 0, outcome.stdout  # (their policy requires the security gate only)
    assert {c for c, _ in outcome.verdicts()} == {"int8", "ir", "f32"}
    assert (outcome.run_dir / "certificate.json").is_file() and not (outcome.run_dir / "statement.json").exists()
    assert sorted(outcome.results["candidates"]) == ["llm/f32", "tiny/int8", "tiny/ir"]
    assert set(outcome.results["candidates"].values()) == {"certified"}
