"""Models as they ship: batch axes other than 0, constants, scored outputs, fixed batches and streams.

The streaming model is ``certify.fixtures.streaming_rnn`` (input [batch, 256], state [2, batch, 128], a 0-d int64
``sr``; outputs ``output`` [batch, 1] and ``stateN`` [2, batch, 128]), run for real in ONNX Runtime workers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from certify.fixtures import streaming_rnn

from certify.backends.base import TensorSpec, prepare_feeds
from certify.errors import ModelError, PlanError
from certify.measure.client import WorkerClient
from certify.measure.dataset import DatasetError, load_dataset, speed_batch
from certify.measure.probes import MAKERS, Axes
from certify.plan import Layout, ModelRef, Tensor
from certify.plan.load import load_plan

pytest.importorskip("onnxruntime")

STREAM_PLAN = """
name = "stream"
[[models]]
name = "vad"
metric = {{ name = "binary_agreement", threshold = 0.5 }}
dataset = {{ path = "audio.npz", inputs = {{ input = "input" }}, labels = "labels", batch_size = 5 }}
{extra}
""" + streaming_rnn.PLAN_LAYOUT.replace("{", "{{").replace("}", "}}") + """[models.baseline]
path = "vad.onnx"
framework = "onnxruntime"
[[models.candidates]]
name = "same"
path = "vad.onnx"
framework = "onnxruntime"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("layout")
    streaming_rnn.build(folder / "vad.onnx")
    streaming_rnn.make_dataset(folder / "audio.npz", sequences=7, chunks=5)
    return folder


def plan_of(folder: Path, extra: str = "", text: str | None = None) -> object:
    path = folder / "certify.toml"
    path.write_text(STREAM_PLAN.format(extra=extra) if text is None else text)
    return load_plan(path)


def error_of(folder: Path, text: str) -> PlanError:
    with pytest.raises(PlanError) as info:
        plan_of(folder, text=text)
    return info.value


def test_the_plan_expresses_axes_constants_outputs_and_streams(project: Path) -> None:
    model = plan_of(project).models[0]  # type: ignore[attr-defined]
    layout = model.layout
    assert layout.input("state").batch_axis == 1 and layout.input("input").batch_axis == 0
    assert layout.constants()["sr"] == Tensor("sr", None, 16000, "int64")
    assert layout.score == ("output",) and layout.output("stateN").batch_axis == 1
    assert layout.carry == (("stateN", "state"),) and layout.carried_inputs == ("state",)
    assert model.candidates[0].layout == layout  # the baseline and every candidate share it
    assert model.metric == "binary_agreement" and dict(model.metric_params) == {"threshold": 0.5}


@pytest.mark.parametrize(("change", "key", "words"), [
    (("batch_axis = 1\n[models.inputs.sr]", "batch_axes = 1\n[models.inputs.sr]"), "inputs.state.batch_axes",
     "did you mean 'batch_axis'"),
    (("batch_axis = 1\n[models.inputs.sr]", 'batch_axis = "nonee"\n[models.inputs.sr]'), "inputs.state.batch_axis",
     "'none'"),
    (('dtype = "int64"', 'dtype = "int46"'), "inputs.sr.dtype", "not a numeric numpy dtype"),
    (('carry = { stateN = "state" }', 'carry = { stateN = 1 }'), "stream.carry", "output = \"input\""),
    (('carry = { stateN = "state" }', 'carry = { stateN = "sr" }'), "stream.carry", "constant"),
    (('inputs = { input = "input" }', 'inputs = { input = "input", sr = "sr" }'), "inputs.sr.value",
     "also read from the dataset"),
    (('threshold = 0.5', 'treshold = 0.5'), "metric", "did you mean 'threshold'"),
    (('threshold = 0.5', 'threshold = 1.5'), "metric", "threshold"),
    (('name = "binary_agreement", threshold = 0.5', 'name = "binary_agreemnt"'), "metric", "did you mean"),
])
def test_layout_mistakes_name_the_key(project: Path, change: tuple[str, str], key: str, words: str) -> None:
    error = error_of(project, STREAM_PLAN.format(extra="").replace(*change))
    assert key in error.key and words in error.message + error.hint, (error.key, error.message)


def test_a_builtin_metric_takes_no_parameters_and_static_needs_input_names(project: Path) -> None:
    error = error_of(project, STREAM_PLAN.format(extra="").replace('name = "binary_agreement", threshold = 0.5',
                                                                   'name = "top1_agreement", threshold = 0.5'))
    assert "takes no parameters" in error.message
    plan = STREAM_PLAN.format(extra="static = true").replace('inputs = { input = "input" }', 'inputs = "input"')
    error = error_of(project, plan)
    assert error.key.endswith("dataset.inputs") and "input names" in error.message


def test_the_dataset_counts_samples_along_each_batch_axis(project: Path) -> None:
    arrays = {"input": np.zeros((6, 16), np.float32), "state": np.zeros((2, 6, 8), np.float32)}
    np.savez(project / "axes.npz", **arrays, y=np.zeros(6))
    dataset = plan_of(project).models[0].dataset  # type: ignore[attr-defined]
    dataset = replace(dataset, path=project / "axes.npz", inputs=(("input", "input"), ("state", "state")),
                      labels="y", limit=4)
    with pytest.raises(DatasetError) as info:  # the harness's old assumption: every batch on axis 0
        load_dataset(dataset)
    assert "disagree on the number of samples" in info.value.message and "batch_axis" in info.value.hint
    layout = Layout(inputs=(Tensor("state", 1),))
    inputs, labels = load_dataset(dataset, layout)
    assert inputs["state"].shape == (2, 4, 8) and inputs["input"].shape == (4, 16) and labels is not None
    assert speed_batch(inputs, 1, layout)["state"].shape == (2, 1, 8)


def test_feeds_add_constants_and_zero_state_and_check_all_but_the_batch_axis(project: Path) -> None:
    layout = plan_of(project).models[0].layout  # type: ignore[attr-defined]
    specs = [TensorSpec("input", ("batch", 256), "float32"), TensorSpec("state", (2, "batch", 128), "float32"),
             TensorSpec("sr", (), "int64")]
    feeds = prepare_feeds(specs, {"": np.zeros((3, 256), np.float64)}, layout)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    assert feeds["state"].shape == (2, 3, 128) and not feeds["state"].any()
    with pytest.raises(ModelError) as info:
        prepare_feeds(specs, {"input": np.zeros((3, 255), np.float32)}, layout)
    assert "does not fit" in info.value.message


def test_a_fixed_batch_model_is_served_its_batch_and_evaluated_in_padded_batches(tmp_path: Path) -> None:
    from tests.helpers.models import build_mlp

    model = build_mlp(tmp_path / "fixed.onnx", batch=1)
    ref = ModelRef("m", model, "onnxruntime", threads=1)
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with WorkerClient("candidate", ref, 60) as worker:
        worker.call("load", ref=ref)
        with pytest.raises(ModelError) as info:
            worker.call("feeds", key="served", arrays={"": x[:3]})
        assert "fixed batch of 1" in info.value.message and "speed_batch_size = 1" in info.value.hint
        worker.call("feeds", key="data", arrays={"": x}, whole=True)
        answer = worker.call("predict", key="data", batch_size=4)
        one = worker.call("feeds", key="one", arrays={"": x[4:5]})
    assert one == {next(iter(one)): [1, 16]}
    assert answer["scored"].shape == (5, 4)
    assert answer["batching"]["fixed_batch"] == 1 and answer["batching"]["batch_size"] == 1


def test_a_stream_runs_chunk_by_chunk_carrying_its_state(project: Path) -> None:
    model = plan_of(project).models[0]  # type: ignore[attr-defined]
    inputs, labels = load_dataset(model.dataset, model.layout)
    ref = model.baseline
    with WorkerClient("baseline", ref, 60) as worker:
        worker.call("load", ref=ref)
        worker.call("feeds", key="data", arrays=inputs, whole=True)
        answer = worker.call("predict", key="data", batch_size=model.dataset.batch_size)  # 7 sequences: 5 + 2
        worker.call("feeds", key="speed", arrays=speed_batch(inputs, 1, model.layout))
        times = worker.call("run", key="speed", iterations=20)
    assert answer["batching"]["streamed"] and answer["batching"]["scored"] == ["output"]
    assert answer["scored"].shape == (7, 5, 1) and labels is not None and labels.shape == (7, 5)
    weights = streaming_rnn.make_weights()

    def step(x: np.ndarray, state: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
        return streaming_rnn.reference_step(weights, x, state, sr)

    carried = streaming_rnn.stream(step, inputs["input"], 16000)
    reset = streaming_rnn.stream(step, inputs["input"], 16000, carry=False)
    np.testing.assert_allclose(answer["scored"][..., 0], carried, atol=1e-4)
    assert np.abs(answer["scored"][..., 0] - reset).max() > 1e-2  # the state really was carried
    assert times.shape == (20,) and (times > 0).all()


def test_robustness_probes_cut_the_state_on_its_own_batch_axis(project: Path) -> None:
    from certify.gates import robustness as rb

    model = plan_of(project).models[0]  # type: ignore[attr-defined]
    inputs, _ = load_dataset(model.dataset, model.layout)
    valid = speed_batch(inputs, 4, model.layout)
    with WorkerClient("candidate", model.baseline, 60) as worker:
        worker.call("load", ref=model.baseline)
        worker.call("feeds", key="valid", arrays=valid)
        limits = rb.limits_for(valid, {}, model.layout)
        seen = {name: worker.call("probe", name=name, key="valid", limits=limits)
                for name in ("NaN input", "+Inf input", "oversized batch", "wrong feature size")}
        # (not "empty batch": ONNX Runtime 1.32's LSTM aborts the process on a batch of 0, a real unsafe result)
    outcomes = {name: rb.classify(next(p for p in rb.ARRAY_PROBES if p.name == name), s)[0]
                for name, s in seen.items()}
    assert limits["rows"] >= 8
    # the NaN row poisons only its own sample: stateN's other samples (axis 1) are unchanged
    assert seen["NaN input"].get("rows_poisoned") is False and outcomes["NaN input"] != rb.UNSAFE, seen
    assert seen["oversized batch"]["shapes_ok"] and seen["oversized batch"]["rows_drift"] < 1e-5, seen
    assert outcomes["wrong feature size"] != rb.UNSAFE


def test_wrong_feature_size_leaves_dynamic_dimensions_alone(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from certify.gates import robustness as rb

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "fcn", [x], [y])
    path = tmp_path / "fcn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    ref = ModelRef("fcn", path, "onnxruntime", threads=1)
    valid = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    with WorkerClient("candidate", ref, 60) as worker:
        worker.call("load", ref=ref)
        worker.call("feeds", key="valid", arrays=valid)
        seen = worker.call("probe", name="wrong feature size", key="valid", limits={"rows": 4})
    assert seen["input"].endswith("[1, 4, 8, 8]"), seen  # the one fixed dimension (channels) is the one changed
    probe = next(p for p in rb.ARRAY_PROBES if p.name == "wrong feature size")
    assert rb.classify(probe, seen)[0] == rb.CLEAR

    only_dynamic = {"x": np.zeros((1, 5), np.float32)}  # the maker alone, on a model with no fixed feature dim
    axes = Axes({"x": 0}, [0], {"x": ("N", "L")}, ("x",))
    made = MAKERS["wrong feature size"](only_dynamic, [only_dynamic["x"]], {}, axes)
    assert made.skip.startswith("input 'x' has only dynamic dimensions")
