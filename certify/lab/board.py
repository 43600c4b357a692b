"""A board in the lab and how to reach it: the SSH (and rsync) command lines every remote step uses.

One ``Board`` holds the connection settings (host, port, user, identity file, known hosts, an optional existing
master connection to multiplex over) and where things live on the board (its Python, its cache folder). Every
command to the board -- the worker, the cache checks, the copies -- is built from it, so a labgrid
``NetworkService`` (address, port, username) plus ``SSHDriver`` (keyfile, its master's ``control`` path) fill in
one ``Board`` (``Board.from_labgrid``) and everything else follows.

SSH never prompts (``BatchMode``): a board that wants a password or an unknown host key is an error, not a hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certify.errors import CertifyError

SSH_LOST = 255  # ssh's own exit status: the connection failed or was lost (the remote command's status otherwise)


class BoardError(CertifyError):
    """A board could not be reached, or refused what was sent to it (its copy of a model differs)."""


@dataclass(frozen=True)
class Board:
    """One board reachable over SSH. ``cache_dir`` is on the board (relative paths are from the login's home)."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    python: str = "python3"
    cache_dir: str = ".cache/edge-certify"
    known_hosts: Path | None = None  # pin the board's host key with this file (else the user's ssh settings)
    ssh_config: str | None = None  # ssh -F: "none" ignores ~/.ssh/config (as labgrid does)
    control_path: str | None = None  # an existing master connection to multiplex over (labgrid SSHDriver.control)
    connect_timeout_s: int = 10
    alive_interval_s: int = 5  # a board that stops answering is declared lost after interval x count seconds
    alive_count: int = 3

    @classmethod
    def from_labgrid(cls, name: str, service: Any, driver: Any = None, **settings: Any) -> Board:
        """A board from a labgrid ``NetworkService`` (address, port, username) and, optionally, an active
        ``SSHDriver`` bound to it, whose key file and master connection (``control``) are then reused."""
        if driver is not None:
            settings.setdefault("identity_file", Path(driver.keyfile) if getattr(driver, "keyfile", "") else None)
            settings.setdefault("control_path", getattr(driver, "control", None))
            settings.setdefault("ssh_config", "none")
        return cls(name=name, host=str(service.address), port=int(service.port), user=str(service.username),
                   **settings)

    @property
    def where(self) -> str:
        return f"board {self.name!r} ({self.user}@{self.host}:{self.port})"

    def ssh_options(self) -> list[str]:
        """Options shared by ssh, and by rsync's ``-e``: no prompts, keep-alives, this board's key and host keys."""
        opts = [*(["-F", self.ssh_config] if self.ssh_config else []), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={self.connect_timeout_s}", "-o", f"ServerAliveInterval={self.alive_interval_s}",
                "-o", f"ServerAliveCountMax={self.alive_count}", "-o", "LogLevel=ERROR", "-p", str(self.port),
                "-l", self.user]
        if self.identity_file is not None:
            opts += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        if self.control_path:
            opts += ["-o", f"ControlPath={self.control_path}", "-o", "ControlMaster=no"]
        return opts

    def ssh_argv(self, command: str) -> list[str]:
        """``ssh ... host command``: ``command`` is one shell line, run by the login shell on the board."""
        return ["ssh", "-x", "-T", *self.ssh_options(), self.host, command]

    def rsync_argv(self, *args: str) -> list[str]:
        """``rsync`` over the same SSH settings; a remote path is written ``board:path`` (``remote()``)."""
        rsh = " ".join(shlex.quote(a) for a in ["ssh", "-x", "-T", *self.ssh_options()])
        return ["rsync", "-e", rsh, *args]

    def remote(self, path: str) -> str:
        """``path`` on the board as rsync names it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{path}"

    def run(self, command: str, *, stdin: bytes = b"", timeout_s: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        """Run one shell line on the board and return what it did; a lost connection or a timeout is a
        ``BoardError`` naming the board."""
        return self.check(self.ssh_argv(command), stdin=stdin, timeout_s=timeout_s, what=command.split(" ", 1)[0])

    def check(self, argv: list[str], *, stdin: bytes = b"", timeout_s: float = 120.0,
              what: str = "") -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` (ssh or rsync to this board) locally; exit 255 (ssh's own failure) or a timeout raise."""
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise BoardError(f"{self.where} did not answer within {timeout_s:.0f} s ({what or argv[0]})",
                             hint="check that the board is up and its sshd answers") from None
        if done.returncode == SSH_LOST:
            raise BoardError(f"{self.where} could not be reached ({what or argv[0]}): "
                             f"{tail(done.stderr) or 'ssh exit status 255'}",
                             hint="check the address, that sshd runs on the board, and the key it accepts")
        return done


@contextlib.contextmanager
def connected(board: Board, *, persist_s: int = 900) -> Iterator[Board]:
    """``board`` with a master connection for the block: each ssh and rsync to the board it yields multiplexes over
    it (one SSH handshake in all instead of one per command), as labgrid's ``SSHDriver`` does. A board that already
    names a master (``control_path``) is yielded as it is."""
    if board.control_path:
        yield board
        return
    folder = tempfile.mkdtemp(prefix="certify-ssh-")
    control = os.path.join(folder, "control")
    log = os.path.join(folder, "master.log")
    argv = ["ssh", "-x", "-T", *board.ssh_options(), "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
            "-o", f"ControlPersist={persist_s}", "-f", "-N", board.host]
    try:
        with open(log, "wb") as errors:  # not a pipe: the master, gone to the background, would hold it open
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                  timeout=board.connect_timeout_s + 30, check=False).returncode
        if code != 0 or not os.path.exists(control):
            with open(log, "rb") as errors:
                raise BoardError(f"{board.where} could not be reached: {tail(errors.read()) or f'ssh status {code}'}",
                                 hint="check the address, that sshd runs on the board, and the key it accepts")
        yield dataclasses.replace(board, control_path=control)
    finally:
        if os.path.exists(control):
            subprocess.run(["ssh", *board.ssh_options(), "-o", f"ControlPath={control}", "-O", "exit", board.host],
                           capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def tail(data: bytes, lines: int = 4) -> str:
    """The last lines of a command's output, as one line."""
    return " | ".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])
