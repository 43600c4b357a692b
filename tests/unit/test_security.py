"""The security gate's checks, each on a real model that must pass and one that must fail: pinned digests, ONNX
(custom-op domains, external data, metadata), OpenVINO IR (extension opsets, truncated .bin, DTDs), GGUF (the tiny
LLaMA, a truncated copy, an oversized chat template, declared sizes past the limits), pickles and Python factories
in model folders, and secrets in the evidence."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from certify import cli
from certify.digests import model_digest
from certify.gates import security
from certify.gates.security import inspect
from certify.modelfiles import onnx_ir as model_formats
from certify.modelfiles.check import FAIL, NOT_APPLICABLE, PASS, WARN, Check
from certify.plan import ModelRef
from tests.helpers import unsafe_models as unsafe


def ref(path: Path, framework: str = "onnxruntime", **fields: object) -> ModelRef:
    return ModelRef("cand", path, framework, **fields)  # type: ignore[arg-type]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def status(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from tests.helpers.models import build_mlp, quantize_dynamic

    folder = tmp_path_factory.mktemp("onnx")
    quantize_dynamic(build_mlp(folder / "fp32.onnx"), folder / "int8.onnx")
    unsafe.custom_domain_onnx(folder / "evil.onnx")
    unsafe.escaping_external_data(folder / "escape")
    (folder / "external").mkdir()
    unsafe.with_external_data(folder / "fp32.onnx", folder / "external" / "model.onnx")
    return folder


# --------------------------------------------------------------------------------------------------- digest

def test_a_pinned_digest_that_matches_passes(onnx_models: Path) -> None:
    path = onnx_models / "int8.onnx"
    check = security.digest_check(ref(path, sha256=model_digest(path).sha256), "candidate")
    assert check.status == PASS


def test_a_wrong_pinned_digest_fails_naming_both_digests_and_the_file(onnx_models: Path) -> None:
    path, wrong = onnx_models / "int8.onnx", "ab" * 32
    check = security.digest_check(ref(path, sha256=wrong), "candidate")
    assert check.status == FAIL
    assert model_digest(path).sha256 in check.reason and wrong in check.reason and str(path) in check.reason


def test_no_pinned_digest_warns_with_the_digest_to_paste(onnx_models: Path) -> None:
    path = onnx_models / "external" / "model.onnx"
    check = security.digest_check(ref(path), "candidate")
    assert check.status == WARN
    assert f"no digest pinned in the plan for 'cand': pin sha256 = '{model_digest(path).sha256}'" in check.reason


def test_the_baseline_is_checked_when_it_pins_a_digest(onnx_models: Path) -> None:
    baseline = ModelRef("baseline", onnx_models / "fp32.onnx", "onnxruntime", sha256="cd" * 32)
    checks = by_name(inspect(ref(onnx_models / "int8.onnx"), baseline))
    assert checks["digest (baseline)"].status == FAIL
    assert "digest (baseline)" not in status(inspect(ref(onnx_models / "int8.onnx"),
                                                     ModelRef("baseline", onnx_models / "fp32.onnx", "onnxruntime")))


def test_certify_digest_prints_what_the_plan_pins(onnx_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx_models / "external" / "model.onnx"
    assert cli.main(["digest", str(model), str(onnx_models / "int8.onnx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"sha256:{model_digest(model).sha256}  {model}",
                     f"sha256:{model_digest(onnx_models / 'int8.onnx').sha256}  {onnx_models / 'int8.onnx'}"]
    pinned = lines[0].split()[0]  # the plan accepts it as printed, with or without the prefix
    assert security.digest_check(ref(model, sha256=pinned.removeprefix("sha256:")), "candidate").status == PASS


def test_certify_digest_refuses_an_escaping_model(onnx_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["digest", str(onnx_models / "escape" / "model.onnx")]) == 2
    assert "lies outside the model's folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- ONNX

def test_an_onnx_runtime_quantized_model_passes(onnx_models: Path) -> None:
    checks = inspect(ref(onnx_models / "int8.onnx"))
    assert status(checks) == {"digest (candidate)": WARN, "onnx external data": NOT_APPLICABLE,
                              "onnx operators": PASS, "onnx metadata": PASS, "pickle": PASS,
                              "python code": NOT_APPLICABLE}
    assert security.verdict(checks).verdict == "pass"


def test_a_custom_operator_domain_fails_until_the_plan_trusts_it(onnx_models: Path) -> None:
    check = by_name(inspect(ref(onnx_models / "evil.onnx")))["onnx operators"]
    assert check.status == FAIL
    assert ("custom operators from domain 'com.evil' (1 nodes: EvilOp) need a custom-op library: trust it "
            "explicitly with allowed_op_domains = ['com.evil']") in check.reason
    trusted = by_name(inspect(ref(onnx_models / "evil.onnx", allowed_op_domains=("com.evil",))))["onnx operators"]
    assert trusted.status == PASS and "trusted by the plan: com.evil" in trusted.reason


def test_custom_operators_inside_subgraphs_and_functions_are_found(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    branch = helper.make_graph([helper.make_node("Hidden", ["x"], ["z"], domain="org.sneaky")], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    function = helper.make_function("my.functions", "Wrapped", ["a"], ["b"],
                                    [helper.make_node("Inner", ["a"], ["b"], domain="org.inner")],
                                    [helper.make_opsetid("", 17), helper.make_opsetid("org.inner", 1)])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
             helper.make_node("Wrapped", ["y"], ["w"], domain="my.functions")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("org.sneaky", 1), helper.make_opsetid("my.functions", 1)])
    onnx.save(model, str(tmp_path / "nested.onnx"))
    check = model_formats.onnx_operators(tmp_path / "nested.onnx", onnx.load(str(tmp_path / "nested.onnx")))
    assert check.status == FAIL and "'org.inner'" in check.reason and "'org.sneaky'" in check.reason
    assert "my.functions" not in check.details["custom_domains"]  # a model-local function is not a custom op
    assert check.details["local_functions"] == ["my.functions:Wrapped"]


def test_external_data_outside_the_model_folder_fails(onnx_models: Path) -> None:
    check = by_name(inspect(ref(onnx_models / "escape" / "model.onnx")))["onnx external data"]
    assert check.status == FAIL and "'../outside.bin' lies outside the model's folder" in check.reason
    in_folder = by_name(inspect(ref(onnx_models / "escape", framework="olive")))["onnx external data"]  # a folder
    assert in_folder.status == FAIL and "'../outside.bin' lies outside the model's folder" in in_folder.reason


def test_external_data_inside_the_folder_passes_and_a_truncated_data_file_fails(onnx_models: Path,
                                                                              tmp_path: Path) -> None:
    good = by_name(inspect(ref(onnx_models / "external" / "model.onnx")))["onnx external data"]
    assert good.status == PASS and "weights.bin" in good.reason
    shutil.copytree(onnx_models / "external", tmp_path / "cut")
    unsafe.truncate(tmp_path / "cut" / "weights.bin")
    cut = by_name(inspect(ref(tmp_path / "cut" / "model.onnx")))["onnx external data"]
    assert cut.status == FAIL and "past the end of weights.bin" in cut.reason and "truncated" in cut.reason


def test_external_data_through_a_symlink_out_of_the_folder_fails(onnx_models: Path, tmp_path: Path) -> None:
    shutil.copytree(onnx_models / "external", tmp_path / "linked")
    (tmp_path / "weights.bin").write_bytes((tmp_path / "linked" / "weights.bin").read_bytes())
    (tmp_path / "linked" / "weights.bin").unlink()
    (tmp_path / "linked" / "weights.bin").symlink_to(tmp_path / "weights.bin")
    check = by_name(inspect(ref(tmp_path / "linked" / "model.onnx")))["onnx external data"]
    assert check.status == FAIL and "outside the model's folder" in check.reason


def test_large_metadata_only_warns(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = unsafe.custom_domain_onnx(tmp_path / "m.onnx", domain="")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"blob": "x" * 40_000})
    check = model_formats.onnx_metadata(path, model)
    assert check.status == WARN and "1 values over 16 KiB (blob)" in check.reason


def test_a_file_that_is_not_onnx_fails_without_a_traceback(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 10)
    check = by_name(inspect(ref(tmp_path / "corrupt.onnx")))["onnx structure"]
    assert check.status == FAIL and "is not a readable ONNX model" in check.reason


# --------------------------------------------------------------------------------------------------- OpenVINO

@pytest.fixture(scope="module")
def ir(onnx_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    return unsafe.openvino_ir(onnx_models / "fp32.onnx", tmp_path_factory.mktemp("ir") / "model.xml")


def ir_copy(ir: Path, folder: Path) -> Path:
    shutil.copytree(ir.parent, folder)
    return folder / ir.name


def test_a_clean_ir_passes(ir: Path) -> None:
    checks = by_name(inspect(ref(ir, framework="openvino")))
    assert checks["openvino operators"].status == PASS and checks["openvino weights"].status == PASS


def test_a_truncated_bin_fails(ir: Path, tmp_path: Path) -> None:
    xml = ir_copy(ir, tmp_path / "cut")
    unsafe.truncate(xml.with_suffix(".bin"))
    check = by_name(inspect(ref(xml)))["openvino weights"]
    assert check.status == FAIL and "lie past its end" in check.reason and "truncated" in check.reason
    xml.with_suffix(".bin").unlink()
    assert by_name(inspect(ref(xml)))["openvino weights"].reason.startswith("model.bin is missing")


def test_an_extension_opset_fails_until_trusted(ir: Path, tmp_path: Path) -> None:
    xml = unsafe.ir_with_extension(ir_copy(ir, tmp_path / "ext"))
    check = by_name(inspect(ref(xml)))["openvino operators"]
    assert check.status == FAIL and "opset 'custom_opset' (ReLU)" in check.reason
    assert "allowed_op_domains = ['custom_opset']" in check.reason
    assert by_name(inspect(ref(xml, allowed_op_domains=("custom_opset",))))["openvino operators"].status == PASS


def test_a_dtd_is_refused_before_parsing(ir: Path, tmp_path: Path) -> None:
    xml = unsafe.ir_with_doctype(ir_copy(ir, tmp_path / "dtd"))
    check = by_name(inspect(ref(xml)))["openvino structure"]
    assert check.status == FAIL and "XML-bomb" in check.reason


# --------------------------------------------------------------------------------------------------- GGUF

@pytest.fixture(scope="module")
def tiny_gguf() -> Path:
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    from tests.helpers.tinyllama import tiny_llama

    return tiny_llama() / "tiny-llama-f32.gguf"


def test_the_tiny_llama_passes(tiny_gguf: Path) -> None:
    checks = by_name(inspect(ref(tiny_gguf, framework="llamacpp")))
    assert checks["gguf structure"].status == PASS and "architecture 'llama'" in checks["gguf structure"].reason
    assert checks["gguf chat template"].status == NOT_APPLICABLE


def test_a_truncated_gguf_fails_with_a_clear_reason(tiny_gguf: Path, tmp_path: Path) -> None:
    from tests.helpers.tinyllama import truncated

    check = by_name(inspect(ref(truncated(tiny_gguf, tmp_path / "half.gguf"))))["gguf structure"]
    assert check.status == FAIL and "end past the end of the file" in check.reason and "truncated" in check.reason
    (tmp_path / "head.gguf").write_bytes(tiny_gguf.read_bytes()[:3000])  # cut inside the metadata
    check = by_name(inspect(ref(tmp_path / "head.gguf")))["gguf structure"]
    assert check.status == FAIL and "inside its header" in check.reason and "Traceback" not in check.reason


def test_a_chat_template_is_recorded_and_an_oversized_one_fails(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    small = by_name(inspect(ref(unsafe.gguf_with_chat_template(tmp_path / "ok.gguf", template))))
    assert small["gguf structure"].status == PASS and small["gguf chat template"].status == WARN
    assert small["gguf chat template"].details["tokenizer.chat_template"]["bytes"] == len(template)
    big = by_name(inspect(ref(unsafe.gguf_with_chat_template(tmp_path / "big.gguf", "x" * 100 * 1024))))
    assert big["gguf chat template"].status == FAIL and "100 KiB (limit 64 KiB)" in big["gguf chat template"].reason


def test_declared_sizes_past_the_limits_fail_before_anything_is_read(tmp_path: Path) -> None:
    array = by_name(inspect(ref(unsafe.gguf_declaring(tmp_path / "a.gguf", array_items=20_000_000))))
    assert "an array of 20000000 items (limit 10,000,000)" in array["gguf structure"].reason
    string = by_name(inspect(ref(unsafe.gguf_declaring(tmp_path / "s.gguf", string_bytes=2 << 20))))
    assert "a string of 2097152 bytes" in string["gguf structure"].reason
    assert array["gguf structure"].status == string["gguf structure"].status == FAIL


def test_a_gguf_without_architecture_fails(tmp_path: Path) -> None:
    path = unsafe.gguf_declaring(tmp_path / "a.gguf")
    path.write_bytes(path.read_bytes().replace(b"general.architecture", b"general.somethingxxx"))
    check = by_name(inspect(ref(path)))["gguf structure"]
    assert check.status == FAIL and "general.architecture is missing" in check.reason
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(40))
    assert "not a GGUF file" in by_name(inspect(ref(tmp_path / "not.gguf")))["gguf structure"].reason


# --------------------------------------------------------------------------------------------------- code

def test_a_model_folder_with_a_pickle_fails(tmp_path: Path) -> None:
    checks = by_name(inspect(ref(unsafe.mlx_style_folder(tmp_path / "mlx", with_pickle=True), framework="mlx")))
    assert checks["pickle"].status == FAIL
    assert checks["pickle"].reason == "optimizer_state.pkl: pickle can run arbitrary code when loaded"


def test_a_clean_model_folder_passes_with_a_warning_about_its_factory(tmp_path: Path) -> None:
    checks = inspect(ref(unsafe.mlx_style_folder(tmp_path / "mlx", with_pickle=False), framework="mlx"))
    code = by_name(checks)["python code"]
    assert code.status == WARN and code.reason.startswith(
        "the model folder names a Python factory (tests.helpers.mlx_models:mlp): it runs code when loaded; pin the "
        "folder's digest")
    result = security.verdict(checks)
    assert result.verdict == "pass" and "warnings: " in result.reason and "Python factory" in result.reason


def test_pickles_are_recognised_by_content_under_other_names(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as archive:  # torch.save's zip layout
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", bytes(16))
    (tmp_path / "legacy.bin").write_bytes(security.LEGACY_TORCH + bytes(16))
    (tmp_path / "weights.bin").write_bytes(bytes(range(64)))
    assert [security.is_pickle(tmp_path / n) for n in ("pytorch_model.bin", "legacy.bin", "weights.bin")] == [
        True, True, False]


# --------------------------------------------------------------------------------------------------- secrets

def evidence(path: Path, *records: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_secret_in_this_candidates_evidence_fails_naming_the_variable(tmp_path: Path) -> None:
    env = {"MY_API_TOKEN": "tok-3f9a8c1d2e"}
    file = evidence(tmp_path / "evidence.jsonl",
                    {"case": "m/leaky", "gate": "accuracy", "measurement": {"info": {"t": "tok-3f9a8c1d2e"}}})
    check = security.secrets_check(file, "m/leaky", {}, environ=env)
    assert check.status == FAIL and "$MY_API_TOKEN in evidence.jsonl (recorded by its accuracy gate)" in check.reason
    assert "tok-3f9a8c1d2e" not in json.dumps(check.to_dict())
    other = security.secrets_check(file, "m/clean", {}, environ=env)
    assert other.status == WARN and "$MY_API_TOKEN from m/leaky" in other.reason
    clean = security.secrets_check(file, "m/clean", {}, environ={"MY_API_TOKEN": "something-else"})
    assert clean.status == PASS and "the values of 1 secret-looking environment variables" in clean.reason


def test_the_gate_runs_through_the_runner_and_records_every_check(onnx_models: Path, tmp_path: Path) -> None:
    from certify.cases import cases_for
    from certify.hardware import detect_host
    from certify.plan.load import load_plan
    from certify.runner import CertificationRun
    from tests.helpers.models import PLAN, build_dataset, candidate

    build_dataset(onnx_models / "data.npz", onnx_models / "fp32.onnx")
    plan_file = onnx_models / "certify.toml"
    plan_file.write_text(PLAN + candidate("int8", "int8.onnx") + candidate("evil", "evil.onnx"))
    run = CertificationRun(load_plan(plan_file), tmp_path / "run", detect_host(), "run")
    results = {c.candidate.name: run.evaluate(c) for c in cases_for(run.plan, "security")}
    assert results["int8"][0].verdict == "pass" and results["evil"][0].verdict == "fail"
    assert "onnx operators: evil.onnx: custom operators from domain 'com.evil'" in results["evil"][0].reason
    checks = results["int8"][1]["measurement"]["checks"]
    assert {c["name"] for c in checks} >= {"digest (candidate)", "onnx operators", "secrets in outputs"}


def test_a_format_without_checks_says_so(tmp_path: Path) -> None:
    (tmp_path / "model.tflite").write_bytes(b"TFL3" + bytes(32))
    checks = by_name(inspect(ref(tmp_path / "model.tflite")))
    assert checks["format"].status == WARN and "only its digest and the pickle check apply" in checks["format"].reason


def ir_layers(*layers: tuple[str, str]) -> list[Any]:
    import xml.etree.ElementTree as ET

    return [ET.Element("layer", {"version": version, "type": kind}) for version, kind in layers]


def test_openvino_tokenizers_operators_pass_only_in_the_tokenizer_irs() -> None:
    """The tokenizer IRs beside an OpenVINO LLM use openvino-tokenizers' operators: trusted there (their code is
    the installed package's), while an unknown extension operator, or the same names in a model IR, still fail."""
    layers = ir_layers(("opset1", "Parameter"), ("extension", "BPETokenizer"), ("extension", "VocabDecoder"))
    tokenizer = model_formats.ir_operators(Path("openvino_tokenizer.xml"), layers)
    assert tokenizer.status == PASS and "2 openvino-tokenizers operators" in tokenizer.reason
    assert model_formats.ir_operators(Path("openvino_model.xml"), layers).status == FAIL
    smuggled = ir_layers(("extension", "BPETokenizer"), ("extension", "RunShellCommand"))
    check = model_formats.ir_operators(Path("openvino_detokenizer.xml"), smuggled)
    assert check.status == FAIL and "RunShellCommand" in check.reason and "BPETokenizer" not in check.reason


def test_an_openvino_llm_folder_as_optimum_intel_exports_it_passes() -> None:
    pytest.importorskip("openvino_tokenizers")
    pytest.importorskip("transformers")
    from certify.fixtures import hf_llama

    try:
        folder = hf_llama.exported("openvino", "int4")
    except hf_llama.FixtureUnavailable as exc:
        pytest.skip(str(exc))
    checks = inspect(ModelRef(name="m", path=folder, framework="ovgenai"))
    operators = [c for c in checks if c.name == "openvino operators"]
    assert len(operators) == 3 and all(c.status == PASS for c in operators), operators
