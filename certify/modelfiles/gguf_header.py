"""A bounded reader of a GGUF file's header (the ``security`` gate's GGUF checks read with it).

``gguf.GGUFReader`` builds objects for every array item and reads past a truncated file's end as short arrays; this
reader checks every read against the file's size and every count, string and array against a limit before
anything is allocated, skips arrays without building them, and reports what breaks a rule as a ``GGUFError``.
``read_gguf`` gives a ``GGUFSummary`` (version, metadata, tensor infos, where the data starts); ``gguf_extents``
says what is wrong with the tensors' data (duplicates, unknown types, misaligned or past the file's end).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MAX_GGUF_COUNT, MAX_GGUF_STRING, MAX_GGUF_ARRAY = 1_000_000, 1 << 20, 10_000_000
READ_BUFFER = 1 << 20


class GGUFError(Exception):
    """A GGUF file that breaks a rule (``truncated``: it ends before what it declares)."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class GGUFSummary:
    version: int
    size: int
    metadata: dict[str, Any]  # scalars and strings; an array as ("array", count)
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, dims, type, offset (from the data section)
    data_start: int


class GGUFHeader:
    """A bounded reader of a GGUF file's header: every read is checked against the file's size and every count
    against a limit before anything is allocated."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle, self.size, self.pos = handle, size, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > self.size:
            raise GGUFError(f"the file ends ({self.size} bytes) inside its header, at byte {self.pos} of a "
                            f"{n}-byte field: truncated", truncated=True)
        self.pos += n
        return self.handle.read(n)

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise GGUFError(f"the file ends ({self.size} bytes) inside its header: truncated", truncated=True)
        self.pos += n
        self.handle.seek(n, 1)

    def number(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, keep: bool = True) -> str:
        n = self.number("<Q")
        if n > MAX_GGUF_STRING:
            raise GGUFError(f"a string of {n} bytes at byte {self.pos} (limit {MAX_GGUF_STRING >> 20} MiB)")
        if not keep:
            self.skip(n)
            return ""
        return self.take(n).decode("utf-8", "replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in SCALARS:
            return self.number(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY or depth > 2:
            raise GGUFError(f"unknown value type {kind}" if kind != ARRAY else "arrays nested more than 3 deep")
        item, count = self.number("<I"), self.number("<Q")
        if count > MAX_GGUF_ARRAY:
            raise GGUFError(f"an array of {count} items (limit {MAX_GGUF_ARRAY:,})")
        if item in SCALARS:
            self.skip(count * struct.calcsize(SCALARS[item]))
        elif item == STRING:
            for _ in range(count):
                self.string(keep=False)
        else:
            for _ in range(count):
                self.value(item, depth + 1)
        return ("array", count)

    def read(self) -> GGUFSummary:
        magic = self.take(4)
        if magic != b"GGUF":
            raise GGUFError(f"not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        version, n_tensors, n_kv = self.number("<I"), self.number("<Q"), self.number("<Q")
        if version not in (2, 3):
            raise GGUFError(f"GGUF version {version} is not supported (2 and 3 are; a big-endian file reads as "
                            "a huge version)")
        if n_tensors > MAX_GGUF_COUNT or n_kv > MAX_GGUF_COUNT:
            raise GGUFError(f"{n_tensors} tensors and {n_kv} metadata keys declared (limit {MAX_GGUF_COUNT:,})")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            if key in metadata:
                raise GGUFError(f"metadata key {key!r} appears twice")
            try:
                metadata[key] = self.value(self.number("<I"))
            except GGUFError as exc:
                raise GGUFError(f"metadata {key!r}: {exc}", exc.truncated) from None
        tensors = [self.tensor_info() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self.pos // alignment) * alignment
        return GGUFSummary(version, self.size, metadata, tensors, start)

    def tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name, n_dims = self.string(), self.number("<I")
        if n_dims > 4:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (GGML has at most 4)")
        dims = tuple(self.number("<Q") for _ in range(n_dims))
        return name, dims, self.number("<I"), self.number("<Q")


def read_gguf(path: Path) -> GGUFSummary:
    with open(path, "rb", buffering=READ_BUFFER) as handle:
        return GGUFHeader(handle, path.stat().st_size).read()


def tensor_sizes() -> dict[int, tuple[int, int]]:
    """GGML type -> (block size, bytes per block), from the gguf package; {} without it."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        return {}
    return {int(kind): (int(block), int(nbytes)) for kind, (block, nbytes) in GGML_QUANT_SIZES.items()}


def gguf_extents(summary: GGUFSummary) -> list[str]:
    """What is wrong with the tensors' data: duplicated names, unknown types, misaligned or beyond the file."""
    sizes, seen, problems, beyond = tensor_sizes(), set(), [], []
    alignment = summary.metadata.get("general.alignment", 32)
    for name, dims, kind, offset in summary.tensors:
        if name in seen or (sizes and kind not in sizes) or offset % alignment:
            problems.append(f"tensor {name!r} " + ("appears twice" if name in seen else f"has unknown type {kind}"
                            if sizes and kind not in sizes else f"is not aligned to {alignment} bytes"))
        seen.add(name)
        block, per_block = sizes.get(kind, (1, 0))
        end = summary.data_start + offset + math.prod(dims) // block * per_block
        if end > summary.size:
            beyond.append((name, end))
    if beyond:
        problems.append(f"{len(beyond)} of {len(summary.tensors)} tensors end past the end of the file "
                        f"({summary.size} bytes; {beyond[0][0]!r} ends at byte {beyond[0][1]}): truncated")
    return problems
