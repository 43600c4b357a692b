"""Benchmarks of the harness itself. Run: ``pytest benchmarks`` (needs the ``dev`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from certify.plan import load_plan


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
