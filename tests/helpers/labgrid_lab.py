"""A real labgrid lab on this machine, for tests: a coordinator, an exporter and one place per namespace board.

``LabgridLab(tmp, {"a": board_a, "b": board_b}, tags={"a": {"platform": "intel"}}).start()``:
- ``labgrid-coordinator -l 127.0.0.1:<free port>`` in ``tmp/coordinator`` (it keeps places.yaml there);
- ``labgrid-exporter`` publishing, per place, the group ``board-<place>`` with one ``NetworkService`` (the board's
  address, port 2222, user root), under the exporter name ``certify-lab``;
- the places: ``create``, ``add-match certify-lab/board-<place>/NetworkService/NetworkService`` (exporter/group/
  class/resource name: the exporter names the resource after its class when the YAML gives no ``cls``),
  ``set-tags``;
- ``env.yaml`` for labgrid's Environment / pytest plugin: one target per place with ``RemotePlace: {name: <place>}``
  and ``SSHDriver: {keyfile: <the board's client key>}``, and ``options: coordinator_address``.

labgrid's SSHDriver starts its master with ``StrictHostKeyChecking=no`` and ``UserKnownHostsFile=/dev/null``, so the
boards need no known_hosts entry. ``client(..., user="other")`` runs labgrid-client as another labgrid user
(``LG_USERNAME``). ``stop()`` ends the exporter and the coordinator, and drops labgrid's process-wide
``RemotePlaceManager`` (it keeps one coordinator session per process, which would outlive this lab).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers import netns_board
from tests.helpers.netns_board import NamespaceBoard

EXPORTER = "certify-lab"
BIN = Path(sys.executable).parent


def unavailable() -> str:
    """Why no lab can be made here ('' when it can)."""
    why = netns_board.unavailable()
    if why:
        return why
    if importlib.util.find_spec("labgrid") is None:
        return "labgrid is not installed (pip install -e '.[lab]')"
    try:
        import labgrid.remote.client  # noqa: F401  (grpc and the generated protocol)
    except Exception as error:
        return f"labgrid does not import: {error}"
    for tool in ("labgrid-coordinator", "labgrid-exporter"):
        if not (BIN / tool).is_file():
            return f"{tool} is not beside {sys.executable}"
    return ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def client_env(user: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LG_ENV", "LG_PLACE", "LG_TOKEN", "LG_COORDINATOR")}
    if user is not None:
        env["LG_USERNAME"] = user
    return env


@dataclass
class LabgridLab:
    tmp: Path
    boards: dict[str, NamespaceBoard]  # place name -> its board
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env_file(self) -> Path:
        return self.tmp / "env.yaml"

    def start(self) -> LabgridLab:
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            self._start_coordinator()
            self._start_exporter()
            self._make_places()
            self._write_env()
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, *args: str, user: str | None = None, check: bool = True,
               timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """``labgrid-client -x <this lab> args...`` (as labgrid user ``user`` when given)."""
        done = subprocess.run([sys.executable, "-m", "labgrid.remote.client", "-x", self.address, *args],
                              capture_output=True, text=True, env=client_env(user), timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def _spawn(self, name: str, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        cwd.mkdir(parents=True, exist_ok=True)
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=client_env())
        self.processes.append(process)
        return process

    def _log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]

    def _start_coordinator(self) -> None:
        for _ in range(3):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            process = self._spawn("coordinator", [str(BIN / "labgrid-coordinator"), "-l", self.address],
                                  self.tmp / "coordinator")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
                time.sleep(0.05)
            self._end(process)
        raise RuntimeError(f"labgrid-coordinator did not start: {self._log('coordinator')}")

    def _start_exporter(self) -> None:
        config = {f"board-{place}": {"NetworkService": {"address": board.address, "username": "root",
                                                         "port": board.port}}
                  for place, board in self.boards.items()}
        (self.tmp / "exporter.yaml").write_text(yaml.safe_dump(config))
        process = self._spawn("exporter", [str(BIN / "labgrid-exporter"), "-c", self.address, "-n", EXPORTER,
                                           "--hostname", "127.0.0.1", str(self.tmp / "exporter.yaml")],
                              self.tmp / "exporter")
        wanted = {f"{EXPORTER}/board-{place}/NetworkService" for place in self.boards}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            if wanted <= set(self.client("resources").stdout.split()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the exporter's resources did not appear: {self._log('exporter')}")

    def _make_places(self) -> None:
        for place in self.boards:
            self.client("-p", place, "create")
            self.client("-p", place, "add-match", f"{EXPORTER}/board-{place}/NetworkService/NetworkService")
            tags = self.tags.get(place, {})
            if tags:
                self.client("-p", place, "set-tags", *(f"{k}={v}" for k, v in tags.items()))

    def _write_env(self) -> None:
        targets = {place: {"resources": {"RemotePlace": {"name": place}},
                           "drivers": {"SSHDriver": {"keyfile": str(board.client_key)}}}
                   for place, board in self.boards.items()}
        self.env_file.write_text(yaml.safe_dump({"targets": targets,
                                                 "options": {"coordinator_address": self.address}}))

    @staticmethod
    def _end(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def stop(self) -> None:
        forget_remote_places()
        for process in reversed(self.processes):  # the exporter first, then the coordinator
            self._end(process)
        self.processes.clear()


def forget_remote_places() -> None:
    """Close the coordinator session labgrid's ``RemotePlaceManager`` keeps for this process, and drop the manager,
    so that a later ``RemotePlace`` starts afresh."""
    if importlib.util.find_spec("labgrid") is None:
        return
    from labgrid.resource.common import ResourceManager
    from labgrid.resource.remote import RemotePlaceManager

    manager = ResourceManager.instances.pop(RemotePlaceManager, None)
    session = getattr(manager, "session", None)
    if session is not None:
        with contextlib.suppress(Exception):
            session.loop.run_until_complete(session.stop())
            session.loop.run_until_complete(session.close())
