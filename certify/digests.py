"""Content digests of models and datasets, the identities a certificate binds its verdicts to.

A single-file model is identified by the sha256 of its bytes. A model made of several files (an OpenVINO IR's
``.xml`` + ``.bin``, an ONNX model with external data, a model folder) is identified, in the manner of OpenSSF
model signing, by the sha256 of a manifest: one line ``<sha256-hex> <relative/path>\\n`` per file, sorted by path.
The files and their own digests are listed next to it, so a verifier can say which file changed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certify.errors import CertifyError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digest:
    sha256: str
    files: tuple[tuple[str, str], ...]  # (relative path, sha256) of every file the model is made of

    def to_dict(self) -> dict[str, object]:
        return {"sha256": self.sha256, "files": [{"path": p, "sha256": d} for p, d in self.files]}


def file_sha256(path: Path) -> str:
    return _cached_file_sha256(str(path), *_stamp(path))


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten or replaced: the cache key that spares re-hashing large models."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@functools.lru_cache(maxsize=256)
def _cached_file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_files(path: Path) -> list[Path]:
    """Every file a model consists of: the folder's files, an IR's .xml and .bin, an ONNX model's external data."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not path.is_file():
        raise CertifyError(f"model file {path} does not exist", hint="check the path, or rebuild the model")
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    elif path.suffix == ".onnx":
        files += _onnx_external_data(path)
    return files


def _onnx_external_data(path: Path) -> list[Path]:
    try:
        import onnx
    except ImportError:  # without onnx the model file alone is digested; ORT would load the same data files
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a corrupt model is the accuracy/speed gates' business: digest its bytes as they are
        return []
    folder, found = path.parent.resolve(), set()
    for tensor in onnx_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise CertifyError(f"{path}: external data {location!r} lies outside the model's folder",
                               hint="keep an ONNX model's external data files next to it")
        found.add(target)
    return sorted(found)


def onnx_tensors(model: Any) -> Iterator[Any]:
    """Every tensor of an ONNX model that can hold data: initializers, sparse initializers' values and indices,
    node attributes, in subgraphs and in model-local function bodies."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
            for s in sparse:
                yield from (s.values, s.indices)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(sub)


def model_digest(path: Path) -> Digest:
    files = model_files(path)
    if len(files) == 1 and files[0] == path:
        digest = file_sha256(path)
        return Digest(digest, ((path.name, digest),))
    base = path if path.is_dir() else path.parent
    entries = tuple((Path(os.path.relpath(f, base)).as_posix(), file_sha256(f)) for f in files)
    entries = tuple(sorted(entries))
    manifest = "".join(f"{d} {p}\n" for p, d in entries).encode()
    return Digest(hashlib.sha256(manifest).hexdigest(), entries)
