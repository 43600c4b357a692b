"""A "board" made on this machine: an sshd in a network namespace of its own, reached over a veth pair.

The namespace ``c17-<pid>-<n>`` gets one end of a veth pair with 10.213.<k>.2/30, the root namespace the other end
with 10.213.<k>.1/30: private addresses that exist only on this machine, between these two interfaces. sshd runs
inside the namespace (``ip netns exec``) with a host key, an authorized client key and a config made in a temporary
folder, admitting only that key, for root. ``stop()`` ends sshd and every process left in the namespace, deletes the
veth pair and the namespace. ``unavailable()`` says why none can be made here (not root, no ``ip netns``, no sshd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222
SSHD_CONFIG = """ListenAddress {address}:{port}
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 50
MaxStartups 50
LogLevel ERROR
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str:
    """Why a namespace board cannot be made here ('' when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the lab tests as root or in a privileged container"
    for tool in ("ip", "ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install openssh-client rsync iproute2)"
    if not Path(SSHD).is_file():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    probe = f"c17-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _run("ip", "netns", "delete", probe, check=False)
    return ""


@dataclass
class NamespaceBoard:
    """One sshd "board" in its own network namespace."""

    tmp: Path
    index: int
    netns: str = ""
    address: str = ""
    port: int = SSH_PORT
    host_if: str = ""
    board_if: str = ""
    sshd: subprocess.Popen[bytes] | None = None
    made: list[str] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.tmp / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.tmp / "known_hosts"

    def start(self) -> NamespaceBoard:
        subnet = (os.getpid() * 7 + self.index) % 250 + 1
        self.netns = f"c17-{os.getpid()}-{self.index}"
        self.host_if, self.board_if = f"c17h{os.getpid() % 10000}{self.index}", f"c17b{os.getpid() % 10000}{self.index}"
        host_if, board_if = self.host_if, self.board_if
        self.address = f"10.213.{subnet}.2"
        _run("ip", "netns", "add", self.netns)
        self.made.append("netns")
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", board_if)
        self.made.append(host_if)
        _run("ip", "link", "set", board_if, "netns", self.netns)
        _run("ip", "addr", "add", f"10.213.{subnet}.1/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", self.netns)
        _run(*inside, "ip", "addr", "add", f"{self.address}/30", "dev", board_if)
        _run(*inside, "ip", "link", "set", board_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        self._keys()
        self._start_sshd()
        return self

    def _keys(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.tmp / "host_ed25519"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        shutil.copy(self.tmp / "client_ed25519.pub", self.tmp / "authorized_keys")
        host_key = (self.tmp / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.address}]:{self.port} {host_key[0]} {host_key[1]}\n")
        (self.tmp / "sshd_config").write_text(SSHD_CONFIG.format(address=self.address, port=self.port, tmp=self.tmp))

    def _start_sshd(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        log = (self.tmp / "sshd.log").open("wb")
        self.sshd = subprocess.Popen(["ip", "netns", "exec", self.netns, SSHD, "-D", "-e", "-f",
                                      str(self.tmp / "sshd_config")], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = _run("ip", "netns", "exec", self.netns, "ss", "-ltn", check=False).stdout
            if f"{self.address}:{self.port}" in probe:
                return
            if self.sshd.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start in {self.netns}: {(self.tmp / 'sshd.log').read_text()}")

    def cut(self) -> None:
        """The board's network goes down (both ends of the veth pair): its processes live on, unreachable."""
        _run("ip", "link", "set", self.host_if, "down")
        _run("ip", "netns", "exec", self.netns, "ip", "link", "set", self.board_if, "down")

    def pids(self) -> list[int]:
        """Every process in the namespace (sshd, its sessions, the workers they run)."""
        out = _run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """The board vanishes: every process in it (sshd and the sessions) gets ``sig``."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def processes(self, argument: str) -> list[int]:
        """The namespace's processes that have ``argument`` as one of their command-line arguments."""
        found = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if argument.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    found.append(pid)
        return found

    def stop(self) -> None:
        self.kill_all()
        if self.sshd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sshd.wait(timeout=10)
        for name in reversed(self.made):
            if name == "netns":
                _run("ip", "netns", "delete", self.netns, check=False)
            else:
                _run("ip", "link", "delete", name, check=False)
        self.made.clear()
