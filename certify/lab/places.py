"""Exclusive use of labgrid places for one session, through labgrid's own ``labgrid-client`` command line.

``hold_places(names, coordinator, timeout_s)`` takes every named place the way a person at the lab would: a
reservation ``name=<place>`` (labgrid's scheduler queues it behind whoever holds or reserved the place), a wait
until the coordinator grants it, then ``acquire``. Places go in sorted name order, so two sessions asking for
overlapping sets queue instead of each holding half. On the way out -- a normal end, an error or Ctrl-C -- what was
acquired here is released and the reservations made here are cancelled. A place this host/user had already acquired
(before the session) is used as it is and left acquired.

The coordinator grants waiting reservations when it schedules: on every reserve, cancel, acquire and release, and
every 15 s; ``labgrid-client wait`` polls each second. A holder who cancels their reservation and then releases
hands the place on within about a second. A release alone leaves the place allocated to the holder's reservation
until they cancel it or it expires (60 s after they last polled it), and a cancel after the release frees the place
only at the next 15 s tick (see ``give_back``).

labgrid names a client ``<host>/<user>`` (``LG_HOSTNAME``/``LG_USERNAME``, else the host name and login); the
coordinator lets only that name acquire a place reserved for it, and labgrid's ``RemotePlace`` resolves only a place
acquired by it. Each ``labgrid-client`` call is a short process (about 0.3 s); its output is the text its commands
print (``-v places``: ``Place 'a':`` then ``  key: value`` lines; ``reserve``: ``Reservation 'TOKEN':`` and
``  state: ...``), read here block by block.

``target_parts(target)`` turns a labgrid target (a ``RemotePlace`` resolved by the coordinator, or a plain
``NetworkService``) into what ``Board.from_labgrid`` takes, with the place's tags.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.errors import CertifyError

DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid's own default
CALL_TIMEOUT_S = 60.0
# Variables that make labgrid-client read an env config (and then act on every place in it) or pick another place.
CLIENT_ENV_DROPPED = ("LG_ENV", "LG_PLACE", "PLACE", "LG_TOKEN", "LG_STATE", "STATE", "LG_INITIAL_STATE")
GONE = ("is not acquired", "does not exist")  # a release or cancel of what is already gone: nothing to give back


class PlaceError(CertifyError):
    """A labgrid place could not be taken (unknown, held by someone else past the wait, coordinator unreachable)."""


@dataclass(frozen=True)
class Held:
    """One place held for the session."""

    place: str
    wait_s: float  # from asking to holding: the reservation granted and the place acquired (0 if held already)
    token: str  # our reservation's token ('' for a place acquired here before, without one)
    acquired_here: bool  # False: this host/user held it before; it stays acquired afterwards
    tags: dict[str, str]  # the place's tags as the coordinator reports them


@dataclass(frozen=True)
class PlaceState:
    """A place as ``labgrid-client -v places`` shows it."""

    name: str
    acquired: str | None  # "host/user"
    reservation: str | None  # the token of the reservation it is allocated to
    tags: dict[str, str]


def coordinator_address(flag: str | None = None, configured: str | None = None) -> str:
    """The coordinator as labgrid picks it: ``--lg-coordinator``, the env config's ``coordinator_address`` option,
    ``LG_COORDINATOR``, then 127.0.0.1:20408."""
    return flag or configured or os.environ.get("LG_COORDINATOR") or DEFAULT_COORDINATOR


def identity() -> str:
    """Who labgrid says we are: ``<host>/<user>``, as its client computes it."""
    return f"{os.environ.get('LG_HOSTNAME', socket.gethostname())}/{os.environ.get('LG_USERNAME', getpass.getuser())}"


def client_argv() -> list[str]:
    """How to run ``labgrid-client``: its module under this interpreter, else the console script beside it."""
    spec = importlib.util.find_spec("labgrid")  # finds the package without importing it (nor grpc)
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    if any((Path(folder) / "remote" / "client.py").is_file() for folder in folders):
        return [sys.executable, "-m", "labgrid.remote.client"]
    script = Path(sys.executable).parent / "labgrid-client"
    if script.is_file():
        return [str(script)]
    raise PlaceError("labgrid is not installed here (no labgrid.remote.client, no labgrid-client)",
                     hint="pip install 'edge-certify[lab]' (labgrid >= 26)")


def blocks(text: str, header: str) -> dict[str, dict[str, str]]:
    """``<header> 'NAME':`` blocks of labgrid's output, each with its ``  key: value`` lines (first level only)."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        start = re.fullmatch(rf"{header} '(.+)':", line)
        if start:
            current = found.setdefault(start.group(1), {})
            continue
        entry = re.fullmatch(r"  ([a-z][a-z ]*):(?: (.*))?", line)
        if current is not None and entry:
            current.setdefault(entry.group(1), (entry.group(2) or "").strip())
    return found


def parse_tags(text: str) -> dict[str, str]:
    """``arch=x86, platform=intel`` (``Place.show``) as a dict."""
    pairs = (item.partition("=") for item in text.split(", ") if item)
    return {key: value for key, _, value in pairs}


def parse_places(text: str) -> dict[str, PlaceState]:
    return {name: PlaceState(name=name, acquired=None if fields.get("acquired", "None") == "None"
                             else fields["acquired"], reservation=fields.get("reservation") or None,
                             tags=parse_tags(fields.get("tags", "")))
            for name, fields in blocks(text, "Place").items()}


def complaint(stderr: str) -> str:
    """labgrid-client's own one-line error (``client.py: Error: ...``, ``Server error: Error: ...``), without its
    log lines."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if not re.match(r"(ERROR|WARNING|INFO|DEBUG)\s", line)] or lines
    last = said[-1] if said else ""
    return re.sub(r"^(\S+: )?(Server error: )?(Error: )?", "", last)


@dataclass
class LabgridClient:
    """``labgrid-client -x <coordinator> ...``, one short process per command."""

    coordinator: str
    argv: list[str] = field(default_factory=client_argv)

    def run(self, *args: str, timeout_s: float = CALL_TIMEOUT_S) -> str:
        """Run one command and return what it printed; a failure is a ``PlaceError`` with labgrid's own line."""
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROPPED}
        try:
            done = subprocess.run([*self.argv, "-x", self.coordinator, *args], capture_output=True, text=True,
                                  env=env, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PlaceError(f"labgrid-client {' '.join(args)} at {self.coordinator} did not finish within "
                             f"{timeout_s:g} s") from None
        if done.returncode == 0:
            return done.stdout
        if "Could not connect to coordinator" in done.stderr:
            raise PlaceError(f"the labgrid coordinator at {self.coordinator} cannot be reached: start "
                             f"labgrid-coordinator there or set --lg-coordinator HOST:PORT",
                             hint="the address comes from --lg-coordinator, the env config's options: "
                                  "coordinator_address, or LG_COORDINATOR (default 127.0.0.1:20408)")
        said = complaint(done.stderr) or f"exit status {done.returncode}"
        raise PlaceError(f"labgrid-client {' '.join(args)} at {self.coordinator}: {said}")

    def places(self) -> dict[str, PlaceState]:
        return parse_places(self.run("-v", "places"))

    def reserve(self, place: str) -> tuple[str, str]:
        """A reservation for exactly ``place``: its token and state (``allocated`` or ``waiting``)."""
        made = blocks(self.run("reserve", f"name={place}"), "Reservation")
        if len(made) != 1:
            raise PlaceError(f"labgrid-client reserve name={place} at {self.coordinator} printed no reservation")
        token, fields = next(iter(made.items()))
        return token, fields.get("state", "")

    def wait(self, token: str, timeout_s: float) -> bool:
        """Wait (``labgrid-client wait``) until reservation ``token`` is no longer waiting; False after
        ``timeout_s``."""
        if timeout_s <= 0:
            return False
        try:
            self.run("wait", token, timeout_s=timeout_s)
        except PlaceError as error:
            if "did not finish within" in error.message:
                return False
            raise
        return True

    def owners(self) -> dict[str, str]:
        """Each reservation's owner (``host/user``), by token."""
        return {token: fields.get("owner", "?") for token, fields in blocks(self.run("reservations"),
                                                                             "Reservation").items()}


@dataclass
class Taken:
    """What this session did, to be undone: places acquired, reservations made (in order)."""

    acquired: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


@contextlib.contextmanager
def hold_places(names: list[str], coordinator: str, timeout_s: float = 600.0) -> Iterator[dict[str, Held]]:
    """Hold every place in ``names`` for the block, waiting at most ``timeout_s`` in all for places others hold;
    yields ``{place: Held}``. Everything acquired or reserved here is given back on the way out."""
    client = LabgridClient(coordinator)
    taken = Taken()
    try:
        held = take_all(client, sorted(set(names)), timeout_s, taken)
        yield held
    except BaseException:
        give_back(client, taken, quiet=True)
        raise
    give_back(client, taken, quiet=False)


def take_all(client: LabgridClient, names: list[str], timeout_s: float, taken: Taken) -> dict[str, Held]:
    if not names:
        return {}
    places = client.places()
    unknown = [name for name in names if name not in places]
    if unknown:
        raise PlaceError(f"no labgrid place {', '.join(map(repr, unknown))} at {client.coordinator}; the places "
                         f"there: {', '.join(sorted(places)) or 'none'}",
                         hint="labgrid-client -p NAME create, add-match and set-tags make one")
    me, deadline = identity(), time.monotonic() + timeout_s
    got: dict[str, tuple[float, str, bool]] = {}
    for name in names:
        if places[name].acquired == me:
            got[name] = (0.0, places[name].reservation or "", False)
        else:
            got[name] = (*take_one(client, name, deadline, timeout_s, taken), True)
    now = client.places()
    lost = [name for name in names if now[name].acquired != me]
    if lost:
        raise PlaceError(f"labgrid place(s) {', '.join(lost)} no longer acquired by {me} right after acquiring")
    return {name: Held(place=name, wait_s=wait_s, token=token, acquired_here=here, tags=now[name].tags)
            for name, (wait_s, token, here) in got.items()}


def take_one(client: LabgridClient, name: str, deadline: float, timeout_s: float,
             taken: Taken) -> tuple[float, str]:
    """Reserve ``name``, wait for the grant (until ``deadline``), acquire it: the seconds that took, the token."""
    asked = time.monotonic()
    token, state = client.reserve(name)
    taken.tokens.append(token)
    if state == "waiting" and not client.wait(token, deadline - time.monotonic()):
        raise PlaceError(f"labgrid place {name!r} is still {holder(client, name)} after waiting {timeout_s:g} s",
                         hint=f"ask them to release it (labgrid-client -p {name} release), or allow a longer wait")
    client.run("-p", name, "acquire")
    taken.acquired.append(name)
    return time.monotonic() - asked, token


def holder(client: LabgridClient, name: str) -> str:
    """Who keeps ``name`` from us, said for a person: ``acquired by host/user`` or ``reserved by host/user``."""
    with contextlib.suppress(PlaceError):
        place = client.places().get(name)
        if place is not None and place.acquired:
            return f"acquired by {place.acquired}"
        if place is not None and place.reservation:
            return f"reserved by {client.owners().get(place.reservation, '?')} (reservation {place.reservation})"
        return "waiting behind earlier reservations"
    return "held by someone else"


def give_back(client: LabgridClient, taken: Taken, *, quiet: bool) -> None:
    """Cancel the reservations made here, then release what was acquired here; every step is tried. Unless
    ``quiet`` (an error is already on its way), a step that failed is a ``PlaceError`` at the end.

    Cancelling first hands each place over at once: the coordinator grants a waiting reservation when it schedules
    (on each reserve, cancel, acquire and release, and every 15 s), and a place counts as free only when it is
    neither acquired nor still marked with a reservation -- a release followed by a cancel leaves the place marked
    during the cancel's scheduling, so the next waiter would get it only at the next 15 s tick."""
    failed: list[str] = []
    steps: list[tuple[str, ...]] = [("cancel-reservation", token) for token in reversed(taken.tokens)]
    steps += [("-p", name, "release-from", identity()) for name in reversed(taken.acquired)]
    for step in steps:
        try:
            client.run(*step)
        except PlaceError as error:
            if not any(gone in str(error) for gone in GONE):
                failed.append(str(error))
    taken.acquired.clear()
    taken.tokens.clear()
    if failed and not quiet:
        raise PlaceError(f"labgrid places not given back: {'; '.join(failed)}",
                         hint="check with labgrid-client who / reservations, and release by hand")


def target_parts(target: Any) -> tuple[Any, Any, dict[str, str], str | None]:
    """A labgrid target as ``(NetworkService, active SSHDriver, place tags, place name or None)``: a target with
    a ``RemotePlace`` has its resources from the coordinator (the place must be acquired by this host/user); a
    target with a local ``NetworkService`` has no place and no tags."""
    places = [res for res in target.resources if type(res).__name__ == "RemotePlace"]
    place = places[0] if places else None
    try:
        service = target.get_resource("NetworkService")
        driver = target.get_driver("SSHDriver")
    except Exception as error:  # labgrid's own errors (no resource, no driver, ssh master failed) carry the cause
        where = f"place {place.name!r}" if place is not None else f"target {target.name!r}"
        raise PlaceError(f"labgrid {where}: no SSH connection ({type(error).__name__}: {error})",
                         hint="the target needs a NetworkService and an SSHDriver, and the board must accept "
                              "the driver's keyfile") from error
    tags = dict(getattr(place, "tags", {}) or {})
    return service, driver, tags, place.name if place is not None else None
