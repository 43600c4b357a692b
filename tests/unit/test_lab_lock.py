"""The board's own host-wide measurement lock (``certify.lab.fleet.board_lock``) on a real sshd "board" in a network
namespace: a second holder waits for the first, its wait is measured, and a holder whose controller dies drops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import certify
from certify.lab.board import Board
from certify.lab.fleet import LOCK_SCRIPT, BoardLost, board_lock
from tests.helpers.netns_board import NamespaceBoard, unavailable

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"no namespace board here: {WHY_NOT}")


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[NamespaceBoard]:
    board = NamespaceBoard(tmp_path / "ns", index=15).start()
    yield board
    board.stop()


def make_board(ns: NamespaceBoard, cache: Path) -> Board:
    return Board(name="locked", host=ns.address, port=ns.port, identity_file=ns.client_key, python=sys.executable,
                 cache_dir=str(cache), known_hosts=ns.known_hosts, ssh_config="none", connect_timeout_s=3)


def test_a_second_holder_waits_for_the_first_and_its_wait_is_measured(ns: NamespaceBoard, tmp_path: Path) -> None:
    board, events, asked, waits = make_board(ns, tmp_path / "cache"), [], [], []

    def second() -> None:
        asked.append(time.monotonic())
        with board_lock(board) as waited:
            events.append(("second holds", time.monotonic()))
            waits.append(waited)

    with board_lock(board):
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 60
        while len(ns.processes(LOCK_SCRIPT)) < 2 and time.monotonic() < deadline:  # the second asks on the board
            time.sleep(0.05)
        assert len(ns.processes(LOCK_SCRIPT)) == 2 and not events  # both on the board, only the first holds
        released = time.monotonic()
        events.append(("first lets go", released))
    thread.join(timeout=60)
    assert [e for e, _ in events] == ["first lets go", "second holds"]
    assert asked[0] + waits[0] >= released  # the wait it reports runs until the first let go


def test_a_lock_whose_controller_dies_is_dropped(ns: NamespaceBoard, tmp_path: Path) -> None:
    """A controller killed with SIGKILL (no chance to release) holds the board no longer than its SSH session."""
    cache = tmp_path / "cache"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ns.address, str(ns.port), str(ns.client_key),
                               str(ns.known_hosts), str(cache)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(Path(certify.__file__).parent.parent)})
    assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    holder.kill()
    holder.wait(timeout=10)
    with board_lock(make_board(ns, cache), wait_s=60):  # a lock still held would be BoardLost after 60 s
        pass


def test_a_board_that_is_gone_is_lost_not_waited_on(ns: NamespaceBoard, tmp_path: Path) -> None:
    board = make_board(ns, tmp_path / "cache")
    ns.stop()
    started = time.monotonic()
    with pytest.raises(BoardLost, match=r"board 'locked' .* did not grant its measurement lock"), \
            board_lock(board, wait_s=60):
        pass
    assert time.monotonic() - started < 30


HOLDER = """
import sys, time
from pathlib import Path
from certify.lab.board import Board
from certify.lab.fleet import board_lock
address, port, key, known, cache = sys.argv[1:]
board = Board(name="locked", host=address, port=int(port), identity_file=Path(key), python=sys.executable,
              cache_dir=cache, known_hosts=Path(known), ssh_config="none")
with board_lock(board):
    print("holding", flush=True)
    time.sleep(600)
"""
