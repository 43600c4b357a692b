"""Holding labgrid places for a session, against a real labgrid lab made here: a coordinator, an exporter and two
namespace boards (``tests.helpers.labgrid_lab``), driven through labgrid-client; no mocks.

A second labgrid user ("other", through ``LG_USERNAME``) holds places to make the session wait.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certify.lab.board import Board
from certify.lab.places import PlaceError, hold_places, identity, parse_places, target_parts
from tests.helpers.labgrid_lab import LabgridLab, forget_remote_places, unavailable
from tests.helpers.netns_board import NamespaceBoard

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"no labgrid lab here: {WHY_NOT}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabgridLab]:
    tmp = tmp_path_factory.mktemp("lab")
    boards: dict[str, NamespaceBoard] = {}
    made: LabgridLab | None = None
    try:
        for index, place in enumerate(("a", "b")):
            boards[place] = NamespaceBoard(tmp / f"board-{place}", index=10 + index).start()
        made = LabgridLab(tmp / "labgrid", boards, tags={"a": {"platform": "intel", "arch": "x86_64"},
                                                         "b": {"platform": "arm"}}).start()
    except Exception as error:  # a lab that cannot start here is a skip that says why
        for board in boards.values():
            board.stop()
        pytest.skip(f"the labgrid lab did not start: {error}")
    yield made
    made.stop()
    for board in boards.values():
        board.stop()


def state(lab: LabgridLab, place: str) -> tuple[str | None, str | None]:
    """(acquired by, reservation) of ``place``, as labgrid-client shows it."""
    shown = parse_places(lab.client("-v", "places").stdout)[place]
    return shown.acquired, shown.reservation


@pytest.fixture
def other_holds_a(lab: LabgridLab) -> Iterator[str]:
    """Place a reserved and acquired by labgrid user "other" (given back at the end whatever happened)."""
    token = lab.client("reserve", "--shell", "name=a", user="other").stdout.strip().removeprefix("export LG_TOKEN=")
    lab.client("-p", "a", "acquire", user="other")
    yield token
    lab.client("-p", "a", "release-from", f"{identity().split('/')[0]}/other", user="other", check=False)
    lab.client("cancel-reservation", token, user="other", check=False)


def test_holds_both_places_then_gives_them_back(lab: LabgridLab) -> None:
    with hold_places(["b", "a"], lab.address, timeout_s=10) as held:
        assert sorted(held) == ["a", "b"]
        assert held["a"].tags == {"platform": "intel", "arch": "x86_64"} and held["b"].tags == {"platform": "arm"}
        assert all(h.acquired_here and h.token and 0 < h.wait_s < 5 for h in held.values())
        assert state(lab, "a") == (identity(), held["a"].token)
    assert "acquired: None" in lab.client("-p", "a", "show").stdout
    assert state(lab, "a") == (None, None) and state(lab, "b") == (None, None)  # reservations cancelled too


def test_gives_places_back_when_the_session_fails(lab: LabgridLab) -> None:
    with pytest.raises(KeyboardInterrupt), hold_places(["a", "b"], lab.address, timeout_s=10):
        raise KeyboardInterrupt
    assert state(lab, "a") == (None, None) and state(lab, "b") == (None, None)


def test_a_place_already_acquired_here_is_used_and_kept(lab: LabgridLab) -> None:
    lab.client("-p", "a", "acquire")
    try:
        with hold_places(["a"], lab.address, timeout_s=10) as held:
            assert not held["a"].acquired_here and held["a"].wait_s == 0
        assert state(lab, "a")[0] == identity()
    finally:
        lab.client("-p", "a", "release")


def test_a_place_held_by_another_user_fails_after_the_wait_naming_them(lab: LabgridLab, other_holds_a: str) -> None:
    started = time.monotonic()
    with pytest.raises(PlaceError) as failed, hold_places(["a"], lab.address, timeout_s=3):
        pass
    waited = time.monotonic() - started
    message = str(failed.value)
    assert 3 <= waited < 8
    assert "'a'" in message and "acquired by" in message and "/other" in message and "\n" not in message
    assert state(lab, "a") == (f"{identity().split('/')[0]}/other", other_holds_a)  # our queued reservation is gone
    assert "release" in failed.value.hint


def test_the_place_comes_when_the_other_user_lets_go(lab: LabgridLab, other_holds_a: str) -> None:
    def let_go() -> None:  # in this order the coordinator grants the place at once (see places.give_back)
        lab.client("cancel-reservation", other_holds_a, user="other")
        lab.client("-p", "a", "release", user="other")

    timer = threading.Timer(1.5, let_go)
    timer.start()
    try:
        with hold_places(["a"], lab.address, timeout_s=15) as held:
            assert held["a"].acquired_here and held["a"].wait_s >= 1
            assert state(lab, "a")[0] == identity()
    finally:
        timer.join()
    assert state(lab, "a") == (None, None)


def test_a_session_hands_its_places_to_the_next_waiter_at_once(lab: LabgridLab) -> None:
    with hold_places(["a"], lab.address, timeout_s=10):
        queued = lab.client("reserve", "name=a", user="other").stdout
        token = queued.split("'")[1]
        assert "state: waiting" in queued
    started = time.monotonic()
    try:
        lab.client("wait", token, user="other", timeout_s=10)
        assert time.monotonic() - started < 3  # not the coordinator's next 15 s scheduling tick
    finally:
        lab.client("cancel-reservation", token, user="other", check=False)


def test_an_unknown_place_lists_the_known_ones(lab: LabgridLab) -> None:
    with pytest.raises(PlaceError) as failed, hold_places(["a", "jetson-9"], lab.address, timeout_s=3):
        pass
    message = str(failed.value)
    assert "'jetson-9'" in message and "a, b" in message and "\n" not in message
    assert state(lab, "a") == (None, None)


def test_an_unreachable_coordinator_is_named_with_what_to_do() -> None:
    with pytest.raises(PlaceError) as failed, hold_places(["a"], "127.0.0.1:9", timeout_s=3):
        pass
    message = str(failed.value)
    assert "127.0.0.1:9" in message and "labgrid-coordinator" in message and "--lg-coordinator" in message
    assert "\n" not in message


def test_a_held_place_is_a_labgrid_target_with_a_working_board(lab: LabgridLab, tmp_path: Path) -> None:
    """labgrid's own Environment resolves the held place (RemotePlace) into the board's NetworkService; its
    SSHDriver runs a command there, and the Board made from both runs ours over the driver's connection."""
    from labgrid import Environment

    with hold_places(["a"], lab.address, timeout_s=10):
        env = Environment(config_file=str(lab.env_file))
        target = env.get_target("a")
        try:
            service, driver, tags, place = target_parts(target)
            assert (service.address, service.port, place) == (lab.boards["a"].address, 2222, "a")
            assert tags == {"platform": "intel", "arch": "x86_64"}
            driver.run_check("true")
            board = Board.from_labgrid("a", service, driver, python=sys.executable, cache_dir=str(tmp_path / "c"))
            done = board.run("echo ok")
            assert (done.returncode, done.stdout.strip()) == (0, b"ok")
        finally:
            env.cleanup()
            forget_remote_places()
