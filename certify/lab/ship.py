"""Copies to a board, once, by digest: the harness's own code and the models it measures.

A board keeps a cache (``Board.cache_dir``): ``harness/<sha256>/certify/...``, ``models/<sha256>/...`` and
``data/<sha256>/<sha256>.npy`` (a dataset's arrays as requests carry them, ``ship_arrays``), each
folder named by the digest of what it holds (``certify.digests``: a file's sha256, or the manifest digest of a
model made of several files). A tree is sent with rsync over the board's SSH settings into ``<digest>.incoming``,
hashed **on the board** by the board's Python, and renamed into place only when every file matches; a tree already
in place is hashed again on the board before each use, so a copy altered on the board is refused (and removed, so
the next run sends it again), never measured. Nothing but ``python3`` and ``rsync`` is needed on the board for this.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import certify
from certify.digests import Digest, file_sha256, model_digest, model_files
from certify.lab.board import Board, BoardError, tail
from certify.measure.arrays import BoardArray
from certify.plan.types import ModelRef

# Run on the board by its Python (``-c``), the request as JSON on stdin: hash each file of ``dir`` and compare;
# "commit" renames a verified upload into place, "check" reports on a tree in place (and removes an altered one).
BOARD_CHECK = r"""
import hashlib, json, os, shutil, sys
req = json.load(sys.stdin)
root, folder = req["root"], req["dir"]
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
def verify():
    for rel, want in req["files"]:
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            return {"state": "missing", "file": rel}
        got = sha(path)
        if got != want:
            return {"state": "mismatch", "file": rel, "got": got, "want": want}
    return {"state": "ok"}
answer = {"state": "absent"} if not os.path.isdir(folder) else verify()
if answer["state"] != "ok" and os.path.isdir(folder):
    shutil.rmtree(folder, ignore_errors=True)
elif req["mode"] == "commit":
    try:
        os.rename(folder, root)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)  # another session put the same tree in place first
print(json.dumps(answer))
"""


@dataclass(frozen=True)
class Tree:
    """Files to place on a board under one digest: (local file, path relative to the tree's root)."""

    kind: str  # "harness" or "models"
    digest: Digest
    base: Path  # the local folder the relative paths start from
    files: tuple[tuple[Path, str], ...]

    def root(self, board: Board) -> str:
        return f"{board.cache_dir.rstrip('/')}/{self.kind}/{self.digest.sha256}"


@dataclass(frozen=True)
class Shipped:
    """What a ``ship`` did: where the tree is on the board and whether it had to be sent (False: cache hit)."""

    root: str
    sent: bool


def model_tree(path: Path) -> Tree:
    """A model file, a model with companion files (IR .bin, ONNX external data), or a model folder."""
    digest = model_digest(path)
    base = path if path.is_dir() else path.parent
    files = tuple((f, Path(os.path.relpath(f, base)).as_posix()) for f in model_files(path))
    return Tree("models", digest, base, files)


@functools.lru_cache(maxsize=1)
def harness_tree() -> Tree:
    """This harness's own code (the ``certify`` package, no bytecode), identified by its manifest digest."""
    package = Path(certify.__file__).parent
    files = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    entries = tuple((f, Path("certify", f.relative_to(package)).as_posix()) for f in files)
    listed = tuple(sorted((rel, file_sha256(f)) for f, rel in entries))
    manifest = "".join(f"{d} {p}\n" for p, d in listed).encode()
    return Tree("harness", Digest(hashlib.sha256(manifest).hexdigest(), listed), package.parent, entries)


def ship(board: Board, tree: Tree, *, timeout_s: float = 600.0) -> Shipped:
    """Make ``tree`` present and verified on ``board``: check the copy in place, else send and verify it."""
    root = tree.root(board)
    if _board_check(board, tree, "check", root)["state"] == "ok":
        return Shipped(root, sent=False)
    incoming = f"{root}.incoming.{os.getpid()}"
    board.run(f"mkdir -p {shlex.quote(incoming)}", timeout_s=60)
    listing = "".join(f"{rel}\n" for _, rel in tree.files).encode()
    done = board.check(board.rsync_argv("-a", "--partial", "--files-from=-", f"{tree.base}/",
                                        board.remote(incoming + "/")),
                       stdin=listing, timeout_s=timeout_s, what="rsync")
    if done.returncode != 0:
        raise BoardError(f"copying {tree.kind} {tree.digest.sha256[:12]} to {board.where} failed: {tail(done.stderr)}",
                         hint="the board needs rsync and room in its cache folder")
    answer = _board_check(board, tree, "commit", root, folder=incoming)
    if answer["state"] != "ok":
        raise BoardError(f"the copy of {tree.kind} {tree.digest.sha256[:12]} on {board.where} does not match what "
                         f"was sent: {_describe(answer)}", hint="the transfer was corrupted or the board's disk is "
                         "failing; it was removed, run again")
    return Shipped(root, sent=True)


def _board_check(board: Board, tree: Tree, mode: str, root: str, *, folder: str = "") -> dict[str, str]:
    request = {"mode": mode, "root": root, "dir": folder or root, "files": list(tree.digest.files)}
    command = f"{shlex.quote(board.python)} -c {shlex.quote(BOARD_CHECK)}"
    done = board.run(command, stdin=json.dumps(request).encode(), timeout_s=600)
    try:
        answer: dict[str, str] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BoardError(f"{board.where}: checking {tree.kind} {tree.digest.sha256[:12]} failed: "
                         f"{tail(done.stderr) or f'exit status {done.returncode}'}",
                         hint=f"the board needs a working {board.python} (Board.python)") from None
    if mode == "check" and answer["state"] == "mismatch":
        raise BoardError(f"{board.where} holds an altered copy of {tree.kind} {tree.digest.sha256[:12]}: "
                         f"{_describe(answer)}; refused (the copy was removed, the next run sends it again)",
                         hint="something on the board changed the cached file: check who writes to "
                              f"{board.cache_dir}")
    return answer


def _describe(answer: dict[str, str]) -> str:
    if answer["state"] == "mismatch":
        return f"{answer['file']} has sha256 {answer['got'][:16]}... on the board, {answer['want'][:16]}... here"
    return f"{answer.get('file', 'the folder')} is {answer['state']}"


def ship_model(board: Board, ref: ModelRef) -> Shipped:
    """Ship ``ref``'s model (every file it is made of) to the board's cache, by digest."""
    return ship(board, model_tree(ref.file))


def board_ref(ref: ModelRef, shipped: Shipped) -> ModelRef:
    """The same ``ModelRef`` with its path on the board: the folder, or the model file in the shipped folder."""
    on_board = shipped.root if ref.file.is_dir() else f"{shipped.root}/{ref.file.name}"
    return dataclasses.replace(ref, path=Path(on_board))


SHIP_ARRAY_BYTES = 256 * 1024  # a request's array from this size on is sent ahead once, as a file, by digest


@functools.lru_cache(maxsize=1)
def _spool() -> Path:
    """This process's folder for arrays written out to be shipped (removed when the process ends)."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="certify-arrays-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def array_tree(array: np.ndarray) -> Tree:
    """``array`` as an ``.npy`` file named by its digest (written once per process), ready to ship."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = _spool() / f"{sha}.npy"
    if not path.exists():
        path.write_bytes(data)
    return Tree("data", Digest(sha, ((path.name, sha),)), path.parent, ((path, path.name),))


def ship_arrays(board: Board, arrays: dict[str, np.ndarray], shipped: dict[str, BoardArray]
                ) -> dict[str, np.ndarray | BoardArray]:
    """``arrays`` with each one of ``SHIP_ARRAY_BYTES`` or more replaced by its copy in the board's cache (sent
    once, verified there by digest; ``shipped`` remembers this worker's copies), so a dataset crosses the network
    once per board, not in every request of every worker."""
    out: dict[str, np.ndarray | BoardArray] = {}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.nbytes < SHIP_ARRAY_BYTES or array.dtype.hasobject:
            out[name] = array
            continue
        tree = array_tree(array)
        if tree.digest.sha256 not in shipped:
            root = ship(board, tree).root
            shipped[tree.digest.sha256] = BoardArray(f"{root}/{tree.files[0][1]}", tree.digest.sha256)
        out[name] = shipped[tree.digest.sha256]
    return out
