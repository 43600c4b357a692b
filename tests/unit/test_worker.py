"""Isolated workers and the ONNX Runtime backend, for real: load, infer, crash, hang, clear errors."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import TensorSpec, prepare_feeds
from certify.errors import BackendUnavailable, ModelError, WorkerCrashed
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.models import build_mlp

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("worker") / "m.onnx")


def ref(path: Path, framework: str = "onnxruntime", **kw: object) -> ModelRef:
    return ModelRef(name="m", path=path, framework=framework, threads=1, **kw)  # type: ignore[arg-type]


def test_worker_loads_runs_and_reports_where_it_ran(model: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with WorkerClient("candidate", ref(model), 60) as worker:
        loaded = worker.call("load", ref=ref(model))
        assert loaded["executed_device"] == "CPUExecutionProvider"
        assert loaded["info"]["providers_active"] == ["CPUExecutionProvider"]
        assert loaded["info"]["intra_op_num_threads"] == 1
        worker.call("feeds", key="k", arrays={"": x.astype(np.float64)})  # float64 is cast, documented
        times = worker.call("run", key="k", iterations=25)
        assert times.shape == (25,) and (times > 0).all()
        out = worker.call("predict", key="k", batch_size=2)["scored"]
        mem = worker.call("memory")
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert mem["peak"] >= mem["rss_before"] > 0


def test_bad_shape_is_a_clear_model_error_and_the_worker_keeps_serving(model: Path) -> None:
    with WorkerClient("candidate", ref(model), 60) as worker:
        worker.call("load", ref=ref(model))
        with pytest.raises(ModelError, match=r"input 'x': dataset shape \(2, 7\) does not fit") as info:
            worker.call("feeds", key="bad", arrays={"": np.zeros((2, 7), np.float32)})
        assert info.value.role == "candidate"
        worker.call("feeds", key="ok", arrays={"": np.zeros((2, 16), np.float32)})
        assert worker.call("run", key="ok", iterations=2).size == 2


def test_corrupt_model_names_the_file_without_a_framework_traceback(tmp_path: Path, model: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:200])
    with WorkerClient("candidate", ref(broken), 60) as worker, pytest.raises(ModelError) as info:
        worker.call("load", ref=ref(broken))
    assert str(broken) in info.value.message and "Traceback" not in info.value.message


def test_segfault_in_a_worker_becomes_an_error_with_the_signal(model: Path) -> None:
    crashing = ref(model, framework="tests.helpers.faulty:SegfaultOnLoad")
    with WorkerClient("candidate", crashing, 60) as worker, pytest.raises(WorkerCrashed, match="signal SIGSEGV"):
        worker.call("load", ref=crashing)


def test_hang_is_killed_at_the_timeout(model: Path) -> None:
    hanging = ref(model, framework="tests.helpers.faulty:HangOnInfer")
    with WorkerClient("candidate", hanging, 60) as worker:
        worker.call("load", ref=hanging)
        worker.call("feeds", key="k", arrays={"": np.zeros((1, 16), np.float32)})
        with pytest.raises(WorkerCrashed, match="did not answer within"):
            worker.call("run", key="k", iterations=1, timeout_s=1.5)


def test_unknown_or_broken_backend_is_unavailable_not_a_crash() -> None:
    with pytest.raises(BackendUnavailable, match="unknown framework"):
        resolve_backend("tensorflow-lite")
    with pytest.raises(BackendUnavailable, match="failed to import"):
        resolve_backend("no_such_module_xyz:Backend")


def test_prepare_feeds_maps_and_checks() -> None:
    specs = [TensorSpec("a", ("batch", 4), "float32"), TensorSpec("b", ("batch",), "int64")]
    with pytest.raises(ModelError, match="has 2 inputs"):
        prepare_feeds(specs, {"": np.zeros((1, 4))})
    with pytest.raises(ModelError, match=r"no array for model input\(s\) \['b'\]"):
        prepare_feeds(specs, {"a": np.zeros((1, 4))})
    with pytest.raises(ModelError, match="dtype float32 but the model expects int64"):
        prepare_feeds(specs, {"a": np.zeros((1, 4)), "b": np.zeros(1, np.float32)})
    feeds = prepare_feeds(specs, {"a": np.zeros((1, 4)), "b": np.zeros(1, np.int32)})
    assert feeds["a"].dtype == np.float32 and feeds["b"].dtype == np.int64


def test_the_memory_reading_leaves_out_the_harness_finding_the_model_files(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding a model's files can import onnx and parse the model: 30 MB for the demo's FP32 model, which were
    once counted as the model's memory. The peak and resident set are read before that work."""
    import certify.digests
    from certify.measure import memory
    from certify.measure.worker import Worker

    if not memory.reset_peak():
        pytest.skip("this kernel cannot reset the peak resident set (/proc/self/clear_refs)")
    held: list[mmap.mmap] = []
    real = certify.digests.model_files

    def costly_model_files(path: Path) -> list[Path]:
        block = mmap.mmap(-1, 64 << 20)  # 64 MiB of fresh pages (a heap block could reuse resident memory)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        held.append(block)
        return real(path)

    monkeypatch.setattr(certify.digests, "model_files", costly_model_files)
    worker = Worker()
    worker.cmd_load(ref(model))
    worker.cmd_feeds("k", {"": np.zeros((3, 16), np.float32)})
    worker.cmd_run("k", 20)
    reading = worker.cmd_memory()
    assert held, "the memory command did not look for the model's files"
    assert reading["peak"] - reading["rss_before"] < 32 << 20
    assert memory.peak_bytes() - reading["rss_before"] >= 64 << 20  # the work came after the reading
