"""certify.gates.registry: one declaration per gate, every other list of gates derived from it, and a new gate is
one function and one registry line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from certify import verify
from certify.errors import CertifyError
from certify.gates.context import GateContext
from certify.gates.registry import BUILTIN, BUILTIN_REGISTRY, GATE_NAMES, GateRegistry, GateSpec
from certify.policy import POLICIES
from certify.report import html, tables
from certify.verdict import PASS, GateResult


def toy(ctx: GateContext) -> GateResult:
    """A toy gate: the number of dataset rows, against a threshold of its own."""
    rows = len(next(iter(ctx.data()[0].values())))
    ctx.measurement["rows"] = rows
    return ctx.decide("dataset rows", rows, ctx.threshold("min_rows"))


TOY = GateSpec("toy", "the dataset has enough rows", toy, defaults={"min_rows": 10.0})


def test_the_built_in_gates_in_their_order() -> None:
    assert GATE_NAMES == ("accuracy", "speed", "memory", "stability", "stress", "fallback", "robustness", "security")
    assert BUILTIN_REGISTRY.where("exclusive") == ("speed", "memory", "stability", "stress", "fallback")
    assert BUILTIN_REGISTRY.where("static") == ("security",)


def test_every_list_of_gates_elsewhere_is_derived_from_the_registry() -> None:
    assert POLICIES["edge-default"].required_gates == GATE_NAMES and BUILTIN_REGISTRY.where("required") == ()
    assert verify.required_of({"gates": {}}) == list(GATE_NAMES)
    with_toy = GateRegistry([*BUILTIN, replace(TOY, required=True)])
    assert with_toy.required(("accuracy", "speed")) == ("accuracy", "speed", "toy")
    assert html.STAGE_GATES == ("accuracy", "speed", "memory")
    assert tables.gate_order(["security", "mine", "accuracy"]) == ["accuracy", "security", "mine"]


def test_every_built_in_evaluator_resolves_and_takes_a_context() -> None:
    import inspect

    for spec in BUILTIN:
        function = spec.evaluator()
        assert list(inspect.signature(function).parameters) == ["ctx"], spec.name


def test_a_toy_gate_is_one_registry_line() -> None:
    registry = GateRegistry()
    registry.add(TOY)
    assert registry.names == (*GATE_NAMES, "toy") and "toy" in registry and registry["toy"].evaluator() is toy
    assert registry.order(["toy", "speed"]) == ["speed", "toy"]
    registry.add(TOY)  # the same declaration twice (a conftest imported twice) is one gate


@pytest.mark.parametrize(("spec", "words"), [
    (replace(TOY, summary="another"), "registered twice"),
    (replace(TOY, name="p95-latency"), "not an identifier"),
    (replace(TOY, name="accuracy"), "registered twice"),
    ("toy", "not a certify.gates.GateSpec"),
])
def test_a_bad_registration_is_refused_with_its_origin(spec: object, words: str) -> None:
    registry = GateRegistry([*BUILTIN, TOY])
    with pytest.raises(CertifyError, match=words) as raised:
        registry.add(spec, "pytest_certify_gates in conftest.py")  # type: ignore[arg-type]
    assert "conftest.py" in raised.value.message or "not a" in raised.value.message


def test_a_toy_gate_runs_through_the_runner_and_is_recorded(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from certify.cases import Case
    from certify.evidence import EvidenceStore
    from certify.hardware import detect_host
    from certify.plan.load import load_plan
    from certify.runner import CertificationRun
    from tests.helpers.models import PLAN, candidate, tiny_project

    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx"))
    plan = load_plan(tmp_path / "certify.toml")
    run = CertificationRun(plan, tmp_path / "run", detect_host(), "t", GateRegistry([*BUILTIN, TOY]))
    model = plan.models[0]
    result, record = run.evaluate(Case(model, model.candidates[0], "toy"))
    assert result.verdict == PASS and result.threshold == 10.0 and record["measurement"]["rows"] > 10
    assert record["serialized"] is False and EvidenceStore(tmp_path / "run").records()[0]["gate"] == "toy"
    failing = GateRegistry([*BUILTIN, replace(TOY, defaults={"min_rows": 1e9})])
    result, _ = CertificationRun(plan, tmp_path / "run2", detect_host(), "t", failing).evaluate(
        Case(model, model.candidates[0], "toy"))
    assert result.verdict == "fail" and "dataset rows" in result.reason
