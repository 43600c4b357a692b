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


def hangs() -> None:
    import time

    time.sleep(120)


def exits() -> None:
    raise SystemExit(2)


def chatty() -> tuple[np.ndarray, np.ndarray]:
    print("loading 4 samples ...")  # a loader's own prints must not corrupt the data it returns
    return np.zeros((4, 2), dtype=np.float32), np.arange(4)


def fails_midway() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    yield np.zeros((2, 2)), np.zeros(2)
    raise OSError("connection reset")
