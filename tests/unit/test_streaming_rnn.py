"""The streaming voice-activity fixture (``certify.fixtures.streaming_rnn``): the Silero-VAD-shaped interface, the
same numbers from the plain and the ``If``-wrapped graph and from the numpy reference, a state and a sample rate
that really change the output, an output that follows the speech bursts without saturating, and ONNX Runtime's
dynamic quantization finding nothing to quantize once the compute sits inside ``If`` branches."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from certify.fixtures import streaming_rnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("streaming_rnn")
    return {"plain": streaming_rnn.build(folder / "plain.onnx"),
            "if": streaming_rnn.build(folder / "if.onnx", wrapped_in_if=True)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    path = streaming_rnn.make_dataset(tmp_path_factory.mktemp("streaming_rnn_data") / "audio.npz")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _ort_step(path: Path) -> streaming_rnn.Step:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def step(x: np.ndarray, state: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
        output, state_next = session.run(None, {"input": x, "state": state, "sr": np.array(sr, np.int64)})
        return output, state_next

    return step


def _reference_step(x: np.ndarray, state: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    return streaming_rnn.reference_step(streaming_rnn.make_weights(), x, state, sr)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, those inside subgraphs (``If`` branches) too."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)


@pytest.mark.parametrize("variant", ["plain", "if"])
def test_the_interface_is_silero_vads(models: dict[str, Path], variant: str) -> None:
    model = onnx.load(str(models[variant]))
    assert model.ir_version == streaming_rnn.IR_VERSION and [(o.domain, o.version) for o in model.opset_import] == [
        ("", 17)]
    session = ort.InferenceSession(str(models[variant]), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        ("input", ["batch", 256], "tensor(float)"), ("state", [2, "batch", 128], "tensor(float)"),
        ("sr", [], "tensor(int64)")]
    assert [(o.name, o.shape, o.type) for o in session.get_outputs()] == [
        ("output", ["batch", 1], "tensor(float)"), ("stateN", [2, "batch", 128], "tensor(float)")]
    ops = {node.op_type for node in model.graph.node}
    assert ("If" in ops) == (variant == "if") and "LSTM" in {node.op_type for node in _nodes(model.graph)}


def test_the_build_is_deterministic(models: dict[str, Path], tmp_path: Path) -> None:
    assert streaming_rnn.build(tmp_path / "again.onnx").read_bytes() == models["plain"].read_bytes()
    again = streaming_rnn.build(tmp_path / "again_if.onnx", wrapped_in_if=True)
    assert again.read_bytes() == models["if"].read_bytes()


@pytest.mark.parametrize("sr", [16000, 8000])
def test_both_graphs_compute_the_numpy_reference(models: dict[str, Path], sr: int) -> None:
    rng = np.random.default_rng(1)
    x = (0.2 * rng.standard_normal((3, 256))).astype(np.float32)
    state = (0.5 * rng.standard_normal((2, 3, 128))).astype(np.float32)
    expected, expected_state = _reference_step(x, state, sr)
    for path in models.values():
        output, state_next = _ort_step(path)(x, state, sr)
        assert output.shape == (3, 1) and state_next.shape == (2, 3, 128)
        np.testing.assert_allclose(output, expected, atol=1e-5)
        np.testing.assert_allclose(state_next, expected_state, atol=1e-5)


def test_the_dataset_layout(dataset: dict[str, np.ndarray], tmp_path: Path) -> None:
    assert dataset["input"].shape == (16, 8, 256) and dataset["input"].dtype == np.float32
    assert dataset["labels"].shape == (16, 8) and dataset["labels"].dtype == np.int64
    assert set(np.unique(dataset["labels"])) == {0, 1}
    assert dataset["speech"].dtype == bool and dataset["speech"].sum() == 8
    assert (dataset["labels"].any(axis=1) == dataset["speech"]).all()  # bursts only in the speech sequences
    assert dataset["sr"].shape == () and int(dataset["sr"]) == 16000
    assert np.abs(dataset["input"]).max() < 1.0
    with np.load(streaming_rnn.make_dataset(tmp_path / "same.npz")) as same:
        assert np.array_equal(same["input"], dataset["input"])
    with np.load(streaming_rnn.make_dataset(tmp_path / "other.npz", sequences=4, chunks=3, seed=7)) as other:
        assert other["input"].shape == (4, 3, 256) and other["speech"].sum() == 2


def test_the_output_varies_and_follows_the_speech(models: dict[str, Path], dataset: dict[str, np.ndarray]) -> None:
    output = streaming_rnn.stream(_ort_step(models["plain"]), dataset["input"], 16000)
    assert output.min() > 0 and output.max() < 1 and output.std() > 0.05
    speech = dataset["labels"].astype(bool)
    assert output[speech].mean() > output[~speech].mean() + 0.3  # a usable detector, not a random one


def test_the_state_matters(models: dict[str, Path], dataset: dict[str, np.ndarray]) -> None:
    step = _ort_step(models["if"])
    carried = streaming_rnn.stream(step, dataset["input"], 16000)
    reset = streaming_rnn.stream(step, dataset["input"], 16000, carry=False)
    assert np.array_equal(carried[:, 0], reset[:, 0])  # the first chunk starts from zeros either way
    assert np.abs(carried - reset).max() > 0.1 and np.abs(carried - reset).mean() > 0.01


def test_the_sample_rate_matters(models: dict[str, Path], dataset: dict[str, np.ndarray]) -> None:
    for path in models.values():
        at_16k = streaming_rnn.stream(_ort_step(path), dataset["input"], 16000)
        at_8k = streaming_rnn.stream(_ort_step(path), dataset["input"], 8000)
        assert np.abs(at_16k - at_8k).max() > 0.05


def test_dynamic_quantization_finds_nothing_inside_the_if(models: dict[str, Path], tmp_path: Path) -> None:
    """Why the ``If`` variant exists: ``quantize_dynamic`` quantizes the plain graph but not the wrapped one."""
    from onnxruntime.quantization import quantize_dynamic

    quantized = {}
    for variant, path in models.items():
        out = tmp_path / f"{variant}_int8.onnx"
        quantize_dynamic(str(path), str(out))
        ops = collections.Counter(node.op_type for node in _nodes(onnx.load(str(out)).graph))
        quantized[variant] = {op: n for op, n in ops.items() if "Integer" in op or "Quantize" in op}
    assert quantized["plain"] == {"MatMulInteger": 3, "DynamicQuantizeLinear": 2, "DynamicQuantizeLSTM": 1}
    assert quantized["if"] == {}


def test_the_command_writes_both_models_and_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert streaming_rnn.main([str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert [Path(p).name for p in written] == ["streaming_rnn.onnx", "streaming_rnn_if.onnx", "streaming_rnn_audio.npz"]
    assert all(Path(p).is_file() for p in written)
    assert streaming_rnn.main([]) == 2
