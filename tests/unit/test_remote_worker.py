"""Measurement workers on a "board" over real SSH: an sshd in a network namespace made by the test, no mocks.

Each board is ``tests.helpers.netns_board.NamespaceBoard`` (a veth pair with 10.213.x.y addresses that exist only
on this machine). The board's Python is this interpreter; its cache is a temporary folder; the harness is shipped
to it by digest, so the worker there runs the shipped copy, not this checkout.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from certify.errors import WorkerCrashed
from certify.lab.board import Board, BoardError, connected
from certify.lab.remote import RemoteWorkerClient, worker_command
from certify.lab.ship import harness_tree, model_tree, ship, ship_model
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.models import build_mlp
from tests.helpers.netns_board import NamespaceBoard, unavailable

pytest.importorskip("onnxruntime")
WHY_NOT = unavailable()
needs_board = pytest.mark.skipif(bool(WHY_NOT), reason=f"no namespace board here: {WHY_NOT}")
X = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)


def make_board(ns: NamespaceBoard, cache: Path, name: str = "ns-board", **settings: object) -> Board:
    return Board(name=name, host=ns.address, port=ns.port, user="root", identity_file=ns.client_key,
                 python=sys.executable, cache_dir=str(cache), known_hosts=ns.known_hosts, ssh_config="none",
                 **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceBoard]:
    """One board for the tests that leave it standing."""
    if WHY_NOT:
        pytest.skip(f"no namespace board here: {WHY_NOT}")
    ns = NamespaceBoard(tmp_path_factory.mktemp("board"), index=0).start()
    yield ns
    ns.stop()


@pytest.fixture
def doomed(tmp_path: Path) -> Iterator[NamespaceBoard]:
    """A board of its own, for a test that kills it."""
    if WHY_NOT:
        pytest.skip(f"no namespace board here: {WHY_NOT}")
    ns = NamespaceBoard(tmp_path / "doomed", index=1).start()
    yield ns
    ns.stop()


@pytest.fixture
def board(namespace: NamespaceBoard, tmp_path: Path) -> Board:
    return make_board(namespace, tmp_path / "board-cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("remote") / "m.onnx")


def ref(path: Path) -> ModelRef:
    return ModelRef(name="m", path=path, framework="onnxruntime", threads=1)


def measure(worker: WorkerClient, model: Path) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    loaded = worker.call("load", ref=ref(model))
    worker.call("feeds", key="k", arrays={"": X})
    return loaded, worker.call("predict", key="k", batch_size=2)["scored"], worker.call("run", key="k", iterations=5)


@needs_board
def test_remote_worker_answers_as_a_local_one(board: Board, model: Path) -> None:
    with WorkerClient("candidate", ref(model), 60) as local:
        _, expected, _ = measure(local, model)
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        loaded, scored, times = measure(remote, model)
        shipped = remote.shipped[str(model)]
    np.testing.assert_array_equal(scored, expected)
    assert times.shape == (5,) and (times > 0).all()
    assert loaded["executed_device"] == "CPUExecutionProvider"
    assert shipped.sent and shipped.root.startswith(board.cache_dir)
    assert (Path(shipped.root) / "m.onnx").read_bytes() == model.read_bytes()


@needs_board
def test_host_facts_come_from_the_board_and_the_shipped_harness_answers(board: Board, model: Path) -> None:
    from certify.hardware import detect_host

    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        facts = remote.call("host")
    assert facts["host"].fingerprint == detect_host().fingerprint  # the "board" is this machine's hardware
    assert facts["host"].platforms == detect_host().platforms
    assert facts["python"] == sys.executable and "onnxruntime" in facts["packages"]
    assert facts["harness"] == f"{board.cache_dir}/harness/{harness_tree().digest.sha256}/certify"


@needs_board
def test_a_model_is_sent_once_then_found_by_digest(board: Board, model: Path) -> None:
    first, second = ship_model(board, ref(model)), ship_model(board, ref(model))
    assert first.sent and not second.sent and first.root == second.root
    assert first.root.endswith(model_tree(model).digest.sha256)
    for harness_sent in (True, False):
        with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
            remote.call("load", ref=ref(model))
            assert not remote.shipped[str(model)].sent and remote.harness.sent is harness_sent


@needs_board
def test_a_model_with_external_data_ships_every_file(board: Board, tmp_path: Path) -> None:
    import onnx

    source = build_mlp(tmp_path / "src.onnx")
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(onnx.load(str(source)), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    with RemoteWorkerClient("candidate", ref(folder / "m.onnx"), 60, board) as remote:
        _, scored, _ = measure(remote, folder / "m.onnx")
        root = Path(remote.shipped[str(folder / "m.onnx")].root)
    assert sorted(p.name for p in root.iterdir()) == ["m.data", "m.onnx"]
    with WorkerClient("candidate", ref(source), 60) as local:
        np.testing.assert_array_equal(scored, measure(local, source)[1])


@needs_board
def test_a_dataset_crosses_to_the_board_once_by_digest_and_answers_as_sent_inline(board: Board, model: Path) -> None:
    data = np.random.default_rng(3).standard_normal((5000, 16)).astype(np.float32)  # 320 KB: shipped ahead
    answers, copies = [], []
    for _ in range(2):
        with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
            remote.call("load", ref=ref(model))
            remote.call("feeds", key="d", arrays={"": data}, whole=True)
            answers.append(remote.call("predict", key="d", batch_size=500)["scored"])
            copies.append(next(iter(remote.arrays.values())))
    assert copies[0] == copies[1] and copies[0].path.startswith(f"{board.cache_dir}/data/{copies[0].sha256}/")
    assert len(list(Path(board.cache_dir, "data").iterdir())) == 1  # one copy on the board for both workers
    with WorkerClient("candidate", ref(model), 60) as local:
        local.call("load", ref=ref(model))
        local.call("feeds", key="d", arrays={"": data}, whole=True)
        expected = local.call("predict", key="d", batch_size=500)["scored"]
    np.testing.assert_array_equal(answers[0], expected)
    np.testing.assert_array_equal(answers[1], expected)
    Path(copies[0].path).write_bytes(b"altered")  # the board's copy changed: refused, then sent again
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        remote.call("load", ref=ref(model))
        with pytest.raises(BoardError, match="altered copy of data"):
            remote.call("feeds", key="d", arrays={"": data}, whole=True)
        remote.call("feeds", key="d", arrays={"": data}, whole=True)
        np.testing.assert_array_equal(remote.call("predict", key="d", batch_size=500)["scored"], expected)


@needs_board
def test_an_altered_copy_on_the_board_is_refused_then_sent_again(board: Board, model: Path) -> None:
    shipped = ship_model(board, ref(model))
    cached = Path(shipped.root) / "m.onnx"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")  # one byte changed on the board
    with pytest.raises(BoardError, match=r"ns-board.* holds an altered copy of models .*m\.onnx has sha256"):
        ship_model(board, ref(model))
    with pytest.raises(BoardError, match="altered copy"), \
            RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"not the model")
        remote.call("load", ref=ref(model))
    assert ship_model(board, ref(model)).sent
    assert cached.read_bytes() == model.read_bytes()


@needs_board
def test_an_unreachable_board_is_a_clear_error(namespace: NamespaceBoard, tmp_path: Path) -> None:
    wrong = make_board(namespace, tmp_path / "c", name="no-sshd", connect_timeout_s=3)
    wrong = Board(**{**vars(wrong), "port": namespace.port + 1})
    with pytest.raises(BoardError, match=r"board 'no-sshd' \(root@10\.213\.\d+\.2:2223\) could not be reached"):
        ship(wrong, harness_tree())


def start_run(remote: RemoteWorkerClient, model: Path) -> tuple[threading.Thread, dict[str, BaseException]]:
    """Load the model and start a long ``run`` in a thread; its error lands in the returned dict."""
    remote.call("load", ref=ref(model))
    remote.call("feeds", key="k", arrays={"": X})
    outcome: dict[str, BaseException] = {}

    def go() -> None:
        try:
            remote.call("run", key="k", iterations=10**8, timeout_s=60)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, outcome


def finish(running: tuple[threading.Thread, dict[str, BaseException]], within_s: float) -> BaseException:
    thread, outcome = running
    thread.join(within_s)
    assert not thread.is_alive(), f"the call did not end within {within_s} s"
    return outcome["error"]


def wait_for_worker(ns: NamespaceBoard) -> list[int]:
    deadline = time.monotonic() + 20
    while not (found := ns.processes("certify.measure.worker")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@needs_board
def test_a_board_whose_sshd_is_killed_mid_call_errors_naming_it(doomed: NamespaceBoard, tmp_path: Path,
                                                                   model: Path) -> None:
    board = make_board(doomed, tmp_path / "cache", name="doomed")
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        running = start_run(remote, model)
        time.sleep(0.5)
        started = time.monotonic()
        doomed.kill_all()  # sshd, the session and the worker: the board is gone
        error = finish(running, within_s=20)
        took = time.monotonic() - started
    assert isinstance(error, WorkerCrashed) and error.role == "candidate"
    assert "board 'doomed'" in error.message and "lost its SSH connection during 'run'" in error.message
    assert took < 10


@needs_board
def test_a_board_whose_network_goes_down_is_declared_lost(doomed: NamespaceBoard, tmp_path: Path,
                                                          model: Path) -> None:
    board = make_board(doomed, tmp_path / "cache", name="cut", alive_interval_s=1, alive_count=2)
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        running = start_run(remote, model)
        time.sleep(0.5)
        doomed.cut()
        error = finish(running, within_s=20)
    assert isinstance(error, WorkerCrashed) and "board 'cut'" in error.message
    assert "lost its SSH connection" in error.message


@needs_board
def test_a_worker_killed_on_the_board_reports_its_signal(board: Board, namespace: NamespaceBoard,
                                                         model: Path) -> None:
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        running = start_run(remote, model)
        (pid,) = wait_for_worker(namespace)
        time.sleep(0.3)
        subprocess.run(["kill", "-SEGV", str(pid)], check=True)
        error = finish(running, within_s=20)
    assert isinstance(error, WorkerCrashed)
    assert "on board 'ns-board'" in error.message and "died with signal SIGSEGV during 'run'" in error.message


@needs_board
def test_a_hung_worker_on_the_board_times_out_and_is_ended_there(board: Board, namespace: NamespaceBoard,
                                                                 model: Path) -> None:
    with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
        remote.call("load", ref=ref(model))
        (pid,) = wait_for_worker(namespace)
        subprocess.run(["kill", "-STOP", str(pid)], check=True)
        started = time.monotonic()
        with pytest.raises(WorkerCrashed, match=r"on board 'ns-board'.* did not answer within 2 s during 'feeds'"):
            remote.call("feeds", key="k", arrays={"": X}, timeout_s=2)
        assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10
    while namespace.processes("certify.measure.worker") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not namespace.processes("certify.measure.worker"), "the hung worker was left running on the board"


def test_the_worker_command_reports_its_group_and_status_and_forwards_the_memory_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTIFY_WORKER_MEMORY_LIMIT_MIB", "512")
    line = worker_command(Board("b", "10.213.0.2", python="/opt/py 3/bin/python3"), "/c/harness/abc")
    assert line.startswith("echo certify-worker-pgid:$$ >&2; export PYTHONPATH=/c/harness/abc; ")
    assert "export CERTIFY_WORKER_MEMORY_LIMIT_MIB=512; '/opt/py 3/bin/python3' -m certify.measure.worker; " in line
    assert line.endswith("echo certify-worker-exit:$? >&2")


def test_a_board_takes_its_connection_from_a_labgrid_network_service() -> None:
    service = SimpleNamespace(address="10.213.0.2", port=2222, username="pi")  # labgrid NetworkService's fields
    driver = SimpleNamespace(keyfile="/keys/lab", control="/tmp/lg-ssh-x/control-10.213.0.2")  # SSHDriver's
    board = Board.from_labgrid("jetson-1", service, driver, python="/usr/bin/python3")
    argv = board.ssh_argv("true")
    assert argv[-2:] == ["10.213.0.2", "true"] and argv[argv.index("-p"):argv.index("-p") + 2] == ["-p", "2222"]
    assert "ControlPath=/tmp/lg-ssh-x/control-10.213.0.2" in argv and "BatchMode=yes" in argv
    assert board.identity_file == Path("/keys/lab") and board.user == "pi"


@needs_board
def test_one_master_connection_carries_every_step_and_its_loss_is_a_clear_error(doomed: NamespaceBoard,
                                                                                 tmp_path: Path, model: Path) -> None:
    with connected(make_board(doomed, tmp_path / "cache", name="muxed")) as board:
        assert board.control_path and Path(board.control_path).exists()
        with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
            assert remote.harness.sent and remote.call("host")["harness"].startswith(board.cache_dir)
            running = start_run(remote, model)
            time.sleep(0.5)
            doomed.kill_all()
            error = finish(running, within_s=20)
    assert isinstance(error, WorkerCrashed) and "board 'muxed'" in error.message
    assert "lost its SSH connection during 'run'" in error.message
    assert not Path(board.control_path).exists()


@needs_board
def test_a_labgrid_ssh_driver_lends_its_connection(namespace: NamespaceBoard, tmp_path: Path, model: Path) -> None:
    """labgrid's own NetworkService and SSHDriver (its master connection) carry the worker."""
    pytest.importorskip("labgrid")
    from labgrid import Target
    from labgrid.driver import SSHDriver
    from labgrid.resource import NetworkService

    target = Target("ns-board")
    service = NetworkService(target, "ssh", address=namespace.address, username="root", port=namespace.port)
    driver = SSHDriver(target, "ssh", keyfile=str(namespace.client_key))
    target.activate(driver)
    try:
        board = Board.from_labgrid("lg-board", service, driver, python=sys.executable, cache_dir=str(tmp_path / "c"))
        assert board.control_path == driver.control
        with RemoteWorkerClient("candidate", ref(model), 60, board) as remote:
            _, scored, _ = measure(remote, model)
    finally:
        target.deactivate(driver)
    with WorkerClient("candidate", ref(model), 60) as local:
        np.testing.assert_array_equal(scored, measure(local, model)[1])


@needs_board
def test_a_board_whose_python_cannot_run_the_worker_is_refused_not_a_crash(namespace: NamespaceBoard,
                                                                             tmp_path: Path) -> None:
    """Detection on a board whose Python passes the cache checks but whose worker dies at start (its runtimes are
    missing): the board is refused with the worker's own words, and the session goes on."""
    from certify.lab.fleet import LabBoard, detect

    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then echo "No module named numpy" >&2; exit 1; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    board = dataclasses.replace(make_board(namespace, tmp_path / "cache", name="broken"), python=str(python))
    found = detect(LabBoard("broken", board))
    assert found.host is None and found.refused.startswith("its worker could not answer: worker for host")
    assert "exit code 1" in found.refused and "No module named numpy" in found.refused
