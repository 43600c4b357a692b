"""An array a request names instead of carrying: sent ahead to a board's cache as a file (``certify.lab.ship``).

Its own module, imported by the worker and by the controller alike: the worker runs as ``__main__``, so a class
defined there would be another class than the one the controller pickled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoardArray:
    """An array in the board's cache (``data/<sha256>/<sha256>.npy``, verified there by digest before the request
    that names it was sent): the worker reads it from ``path``."""

    path: str
    sha256: str

    def load(self) -> np.ndarray:
        return np.asarray(np.load(self.path, allow_pickle=False))
