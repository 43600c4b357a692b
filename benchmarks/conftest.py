"""Benchmarks of the harness itself. Run: ``pytest benchmarks -p no:cacheprovider -s`` (needs the ``dev`` extra).

The whole session holds the machine-wide benchmark lock (``/tmp/bench.lock``, see ``bench_support.bench_lock``),
so benchmark sessions of several engineers on one host run one after the other instead of disturbing each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_support import bench_lock

from certify.plan.load import load_plan


@pytest.fixture(scope="session", autouse=True)
def benchmark_lock() -> Iterator[dict[str, Any]]:
    """Held for the whole session; tests record it (how long it waited, who held it) in their reports."""
    with bench_lock() as lock:
        yield lock


@pytest.fixture(scope="session")
def demo_plan_path() -> Path:
    pytest.importorskip("sklearn")
    from certify.fixtures import demo

    return demo.ensure_built()


@pytest.fixture(scope="session")
def smallest_demo_model(demo_plan_path: Path):  # type: ignore[no-untyped-def]
    """The fastest demo candidate (dynamic INT8), its batch-1 input, with one intra-op thread as in the demo."""
    plan = load_plan(demo_plan_path)
    model = plan.models[0]
    ref = next(c for c in model.candidates if c.name == "int8-dynamic")
    x = np.load(model.dataset.path)["x"][:1].astype(np.float32)
    return ref, {"pixels": x}
