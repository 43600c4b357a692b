"""Plan loading: a valid plan is frozen; every mistake names the file, the key and what to do."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from certify.errors import PlanError
from certify.plan.load import find_plan, load_plan
from tests.helpers.models import PLAN, candidate, tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("plan"))


def write(folder: Path, text: str, name: str = "certify.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error_of(folder: Path, text: str) -> PlanError:
    with pytest.raises(PlanError) as info:
        load_plan(write(folder, text))
    return info.value


def test_valid_plan_loads_frozen_with_resolved_paths(project: Path) -> None:
    plan = load_plan(write(project, PLAN + candidate("int8", "int8.onnx", extra='platform = ["intel"]')))
    model = plan.models[0]
    assert model.baseline.path == project / "fp32.onnx"
    assert model.candidates[0].platforms == ("intel",)
    assert model.dataset.labels == "y" and model.dataset.inputs == (("", "x"),)
    assert plan.policy.name == "edge-default" and plan.measure.threads == 1
    assert model.baseline.threads == 1 and model.candidates[0].threads == 1  # measure.threads is the default
    assert plan.digest.startswith("sha256:")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.name = "changed"  # type: ignore[misc]


def test_model_threads_override_the_plan_default(project: Path) -> None:
    plan = load_plan(write(project, PLAN + candidate("int8", "int8.onnx", extra="threads = 2")))
    assert plan.models[0].baseline.threads == 1 and plan.models[0].candidates[0].threads == 2


def test_typo_in_key_names_file_key_and_suggestion(project: Path) -> None:
    err = error_of(project, PLAN + candidate("int8", "int8.onnx", extra='devce = "cpu"'))
    assert err.file.endswith("certify.toml")
    assert err.key == "models[0].candidates[0].devce"
    assert "did you mean 'device'" in err.diagnostics()


def test_missing_model_file_is_named(project: Path) -> None:
    err = error_of(project, PLAN + candidate("int8", "nope.onnx"))
    assert err.key == "models[0].candidates[0].path"
    assert "file not found" in err.message and "nope.onnx" in err.message


def test_wrong_type_is_named(project: Path) -> None:
    err = error_of(project, PLAN.replace("threads = 1", 'threads = "two"') + candidate("int8", "int8.onnx"))
    assert err.key == "measure.threads" and "expected int" in err.message


def test_unknown_framework_suggests_closest(project: Path) -> None:
    err = error_of(project, PLAN + candidate("int8", "int8.onnx", framework="onnxruntim"))
    assert err.key == "models[0].candidates[0].framework"
    assert "did you mean 'onnxruntime'" in err.message


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('platform = "nvdia"', "platform", "did you mean 'nvidia'"),
    ('device = "tpu"', "device", "unknown device"),
    ("policy = { min_speedup = true }", "min_speedup", "expected int or float"),
    ("policy = { min_speeedup = 1.5 }", "min_speeedup", "did you mean 'min_speedup'"),
])
def test_candidate_field_errors(project: Path, extra: str, key: str, words: str) -> None:
    err = error_of(project, PLAN + candidate("int8", "int8.onnx", extra=extra))
    assert err.key.endswith(key) and words in err.diagnostics()


def test_unknown_policy_and_metric(project: Path) -> None:
    assert "did you mean 'edge-default'" in error_of(
        project, 'policy = "edge-defualt"\n' + PLAN + candidate("c", "int8.onnx")).message
    err = error_of(project, PLAN.replace('"top1_accuracy"', '"top1_acuracy"') + candidate("c", "int8.onnx"))
    assert err.key == "models[0].metric" and "did you mean 'top1_accuracy'" in err.message


def test_dataset_key_missing_lists_the_file_keys(project: Path) -> None:
    err = error_of(project, PLAN.replace('path = "data.npz"', 'path = "data.npz"\ninputs = "pixels"')
                   + candidate("c", "int8.onnx"))
    assert err.key == "models[0].dataset.inputs" and "keys in the file: x, y" in err.hint


def test_duplicate_candidate_names_and_no_candidates(project: Path) -> None:
    err = error_of(project, PLAN + candidate("c", "int8.onnx") + candidate("c", "int8.onnx"))
    assert "duplicate candidate name 'c'" in err.message
    assert error_of(project, PLAN).key == "models[0].candidates"


def test_bad_toml_and_missing_plan(project: Path, tmp_path: Path) -> None:
    assert error_of(project, "name = \n").key == "(syntax)"
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "absent.toml")


def test_candidate_policy_override_derives_a_new_policy(project: Path) -> None:
    plan = load_plan(write(project, PLAN + candidate("c", "int8.onnx", extra="policy = { min_speedup = 1.5 }")))
    derived = plan.policy_for(plan.models[0].candidates[0])
    assert derived.min_speedup == 1.5 and derived.name == "edge-default+overrides"
    assert derived.digest() != plan.policy.digest() and plan.policy.min_speedup == 2.0


def test_pyproject_tool_certify_is_found_and_loaded(project: Path, tmp_path: Path) -> None:
    body = PLAN.replace("[measure]", "[tool.certify.measure]").replace("[[models]]", "[[tool.certify.models]]")
    body = body.replace("[models.", "[tool.certify.models.").replace('name = "tiny"\n', "", 1)
    body = body.replace("\n[tool.certify.measure]", '[tool.certify]\nname = "tiny"\n\n[tool.certify.measure]', 1)
    body += candidate("c", "int8.onnx").replace("[[models.candidates]]", "[[tool.certify.models.candidates]]")
    (project / "certify.toml").unlink(missing_ok=True)
    write(project, '[project]\nname = "x"\n' + body, "pyproject.toml")
    found = find_plan(project)
    assert found == project / "pyproject.toml"
    assert load_plan(found).models[0].candidates[0].name == "c"
    assert find_plan(tmp_path) is None


@pytest.mark.parametrize(("device", "device_class"), [
    ("cpu", "cpu"), ("CPU", "cpu"), ("GPU.0", "gpu"), ("NPU", "npu"), ("AUTO", "cpu"), ("AUTO:GPU,CPU", "gpu"),
    ("AUTO:-GPU", "cpu"), ("HETERO:NPU,CPU", "npu"), ("MULTI:GPU.1,CPU", "gpu"),
])
def test_device_strings_map_to_a_device_class(device: str, device_class: str) -> None:
    from certify.plan import ModelRef

    assert ModelRef("m", None, "openvino", device=device).device_class == device_class


def test_text_datasets_are_for_language_model_metrics(project: Path) -> None:
    (project / "corpus.txt").write_text("some text")
    wrong = PLAN.replace('path = "data.npz"', 'text = "corpus.txt"\ncontext = 64') + candidate("int8", "int8.onnx")
    model = load_plan(write(project, wrong.replace('metric = "top1_accuracy"\n', ""))).models[0]
    assert model.metric == "token_agreement" and model.dataset.context == 64 and model.dataset.speed == "generation"
    assert model.dataset.text == project / "corpus.txt"
    err = error_of(project, wrong)
    assert err.key == "models[0].metric" and "does not fit a text dataset" in err.message
    err = error_of(project, PLAN.replace('metric = "top1_accuracy"', 'metric = "perplexity"')
                   + candidate("int8", "int8.onnx"))
    assert "does not fit an array dataset" in err.message


def test_production_readiness_keys_load_and_bad_values_are_named(project: Path) -> None:
    digest = "ab" * 32
    text = PLAN.replace("[[models]]", "[stress]\nduration_s = 2.5\nclients = 3\nrate = 40.0\n\n[[models]]") + candidate(
        "int8", "int8.onnx", extra=f'sha256 = "sha256:{digest.upper()}"\nfallback = "baseline"\n'
        'device_fallback = false\nallowed_op_domains = ["com.example"]')
    plan = load_plan(write(project, text))
    cand = plan.models[0].candidates[0]
    assert (plan.stress.duration_s, plan.stress.clients, plan.stress.rate) == (2.5, 3, 40.0)
    assert cand.sha256 == digest and cand.fallback == "baseline" and cand.device_fallback is False
    assert cand.allowed_op_domains == ("com.example",)
    assert load_plan(write(project, PLAN + candidate("int8", "int8.onnx"))).stress.rate == 0.0  # closed loop only
    err = error_of(project, PLAN + candidate("int8", "int8.onnx", extra='sha256 = "abc"'))
    assert err.key == "models[0].candidates[0].sha256" and "64 hex digits" in err.message
    err = error_of(project, PLAN + candidate("int8", "int8.onnx", extra='fallback = "int9"') + candidate(
        "int9x", "int8.onnx"))
    assert err.key == "models[0].candidates[0].fallback" and "did you mean 'int9x'" in err.diagnostics()
    err = error_of(project, PLAN.replace("[[models]]", "[stress]\nclients = 0\n\n[[models]]") + candidate(
        "int8", "int8.onnx"))
    assert err.key == "stress.clients" and "must be positive" in err.message
