"""Dataset loaders named in test plans as ``loader = "tests.helpers.loaders:function"``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in (0, 4, 8):
        yield np.arange(start * 3, (start + 4) * 3, dtype=np.float32).reshape(4, 3), np.arange(start, start + 4)


def named_inputs() -> tuple[dict[str, np.ndarray], None]:
    return {"a": np.zeros((5, 2)), "b": np.ones((5, 1))}, None


def ragged() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((5, 2)), np.zeros(4)


def not_a_tuple() -> list[int]:
    return [1, 2, 3]


def raises() -> None:
    raise RuntimeError("database is down")
