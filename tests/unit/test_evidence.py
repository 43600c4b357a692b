"""certify.evidence: atomic JSON documents, the append-only evidence log, the per-run cache and file locks."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.evidence import EVIDENCE_FILE, EvidenceStore, file_lock, write_json_atomic

CTX = multiprocessing.get_context("fork")  # children inherit the test module; fcntl is POSIX-only anyway


# --- write_json_atomic -------------------------------------------------------------------------------------


def test_write_json_atomic_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "results.json"
    data = {"b": np.float32(1.5), "a": np.arange(3), "path": Path("/x/y"), "n": np.int64(7)}
    write_json_atomic(target, data)
    assert json.loads(target.read_text()) == {"a": [0, 1, 2], "b": 1.5, "n": 7, "path": "/x/y"}
    write_json_atomic(target, {"version": 2})  # overwrite
    assert json.loads(target.read_text()) == {"version": 2}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_write_json_atomic_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json_atomic(target, {"ok": True})
    before = target.read_bytes()
    circular: dict[str, Any] = {"ok": False}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(target, circular)
    assert target.read_bytes() == before
    assert json.loads(before) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the temp file was removed


def test_write_json_atomic_failure_on_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "r.json", {("tuple", "key"): 1})
    assert list(tmp_path.iterdir()) == []


# --- EvidenceStore.append / records ------------------------------------------------------------------------


def test_records_of_an_empty_store(tmp_path: Path) -> None:
    assert EvidenceStore(tmp_path / "run").records() == []


def test_append_keeps_order_and_one_line_per_record(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "run")
    records = [{"case": f"c{i}", "value": i * 0.5, "arr": np.arange(i)} for i in range(5)]
    for record in records:
        store.append(record)
    expected = [{"case": f"c{i}", "value": i * 0.5, "arr": list(range(i))} for i in range(5)]
    assert store.records() == expected
    lines = (tmp_path / "run" / EVIDENCE_FILE).read_bytes().split(b"\n")
    assert len(lines) == 6 and lines[-1] == b""  # newline-terminated, one record a line
    assert EvidenceStore(tmp_path / "run").records() == expected  # a new store reads the same file


@pytest.mark.parametrize("torn", [b'{"case": "c2", "val', b'{"case": "c2"', b"{"])
def test_records_skip_a_torn_final_line(tmp_path: Path, torn: bytes) -> None:
    store = EvidenceStore(tmp_path)
    store.append({"case": "c0"})
    store.append({"case": "c1"})
    with open(store.path, "ab") as handle:
        handle.write(torn)  # a writer killed mid-line: no closing brace, no newline
    assert store.records() == [{"case": "c0"}, {"case": "c1"}]


def test_record_appended_after_a_torn_line_survives(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    store.append({"case": "c0"})
    with open(store.path, "ab") as handle:
        handle.write(b'{"case": "c1", "val')
    store.append({"case": "c2"})
    assert store.records() == [{"case": "c0"}, {"case": "c2"}]


def _append_many(run_dir: str, writer: int, count: int) -> None:
    store = EvidenceStore(Path(run_dir))
    for seq in range(count):
        # large enough that unlocked, unbuffered writers would interleave
        store.append({"writer": writer, "seq": seq, "payload": f"{writer}-{seq}-" + "x" * 4000})


def test_concurrent_appends_from_processes_stay_intact(tmp_path: Path) -> None:
    procs = [CTX.Process(target=_append_many, args=(str(tmp_path), w, 50)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    records = EvidenceStore(tmp_path).records()
    assert len(records) == 200
    lines = (tmp_path / EVIDENCE_FILE).read_text().splitlines()
    assert len(lines) == 200 and all(line.startswith("{") and line.endswith("}") for line in lines)
    assert {(r["writer"], r["seq"]) for r in records} == {(w, s) for w in range(4) for s in range(50)}
    assert all(r["payload"] == f"{r['writer']}-{r['seq']}-" + "x" * 4000 for r in records)
    for writer in range(4):  # each writer's own records stay in its order
        assert [r["seq"] for r in records if r["writer"] == writer] == list(range(50))


# --- cache -------------------------------------------------------------------------------------------------


def test_cached_json_computes_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return {"speedup": 2.5, "samples": [1, 2, 3]}

    store = EvidenceStore(tmp_path)
    first = store.cached_json("case-speed", compute)
    second = store.cached_json("case-speed", compute)
    third = EvidenceStore(tmp_path).cached_json("case-speed", compute)  # another worker, same run dir
    assert calls == [1]
    assert first == second == third == {"speedup": 2.5, "samples": [1, 2, 3]}
    assert store.cached_json("other", lambda: {"k": 1}) == {"k": 1}  # keys are independent
    assert json.loads((tmp_path / "cache" / "case-speed.json").read_text()) == first


def test_cached_json_failure_is_not_cached(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)

    def boom() -> dict[str, Any]:
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        store.cached_json("k", boom)
    assert store.cached_json("k", lambda: {"retry": True}) == {"retry": True}


def test_cached_array_computes_once(tmp_path: Path) -> None:
    calls: list[int] = []
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)

    def compute() -> np.ndarray:
        calls.append(1)
        return expected

    store = EvidenceStore(tmp_path)
    first = store.cached_array("model-baseline-outputs", compute, owner="model--int8")
    second = store.cached_array("model-baseline-outputs", compute, owner="model--fp16")
    assert calls == [1]
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert second.dtype == np.float32
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "model-baseline-outputs.lock", "model-baseline-outputs.npy", "model-baseline-outputs.origin.json"]
    first_case = store.shared_origin("model-baseline-outputs", "model--int8")
    assert first_case["measured_for"] == "model--int8" and first_case["shared"] and not first_case["reused"]
    assert first_case["stored_bytes"] == expected.nbytes
    assert store.shared_origin("model-baseline-outputs", "model--fp16")["reused"] is True


# --- file_lock ---------------------------------------------------------------------------------------------


def _hold(lock: str, exclusive: bool, seconds: float, queue: Any) -> None:
    with file_lock(Path(lock), exclusive=exclusive) as waited:
        start = time.monotonic()
        time.sleep(seconds)
        queue.put((start, time.monotonic(), waited))


def _run_holders(lock: Path, exclusive: bool, seconds: float) -> tuple[float, list[tuple[float, float, float]]]:
    queue = CTX.Queue()
    started = time.monotonic()
    procs = [CTX.Process(target=_hold, args=(str(lock), exclusive, seconds, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    spans = sorted(queue.get(timeout=10) for _ in procs)
    for proc in procs:
        proc.join(10)
    return time.monotonic() - started, spans


def test_file_lock_exclusive_holders_run_serially(tmp_path: Path) -> None:
    total, spans = _run_holders(tmp_path / "measure.lock", True, 0.3)
    assert total >= 0.6
    (_, first_end, _), (second_start, _, second_waited) = spans
    assert second_start >= first_end  # never held by both
    assert second_waited > 0.1  # the later one reports its wait


def test_file_lock_shared_holders_overlap(tmp_path: Path) -> None:
    _, spans = _run_holders(tmp_path / "measure.lock", False, 0.3)
    (_, first_end, _), (second_start, _, _) = spans
    assert second_start < first_end


def _try_exclusive(lock: str, queue: Any) -> None:
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            queue.put("blocked")
        else:
            queue.put("acquired")


def test_file_lock_blocks_other_processes_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    queue = CTX.Queue()
    with file_lock(lock) as waited:
        assert 0 <= waited < 1.0 and lock.exists()
        proc = CTX.Process(target=_try_exclusive, args=(str(lock), queue))
        proc.start()
        assert queue.get(timeout=10) == "blocked"
        proc.join(10)
    proc = CTX.Process(target=_try_exclusive, args=(str(lock), queue))
    proc.start()
    assert queue.get(timeout=10) == "acquired"
    proc.join(10)
