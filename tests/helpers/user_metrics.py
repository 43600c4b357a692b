"""User metrics as a project would write them: ``function(outputs, baseline, labels) -> one score per sample``."""

from __future__ import annotations

import numpy as np


def within_tolerance(outputs: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Share of a sample's values within 0.05 of the baseline's."""
    diff = np.abs(outputs.reshape(len(outputs), -1) - baseline.reshape(len(baseline), -1))
    return np.asarray((diff <= 0.05).mean(axis=1), dtype=np.float64)


def one_number(outputs: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None) -> float:
    """Wrong on purpose: one number for the whole set, not a score per sample."""
    return float(outputs.mean())
