"""Hooks a project implements in its ``conftest.py`` (or a plugin) to extend certification. Registered by the
plugin with ``pytest_addhooks``; each hook's docstring shows an implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from certify.gates.registry import GateSpec



@pytest.hookspec
def pytest_certify_gates() -> list[GateSpec]:  # type: ignore[empty-body]
    """Gates this project adds to the built-in ones. Every gate returned runs on every case of the plan, shows as
    a marker (``pytest -m p95_latency``), a column of the matrix, a row of ``results.json`` and a subject gate of
    the certificate, like a built-in gate. Called once per session, after the initial conftests are loaded (a
    ``conftest.py`` in the rootdir or next to the plan).

    Example (``conftest.py``)::

        import numpy as np
        from certify.gates import GateContext, GateSpec

        def p95_latency(ctx: GateContext):
            feeds = ctx.speed_feeds()
            with ctx.worker() as model:          # the candidate, loaded in a fresh worker process
                model.call("feeds", key="x", arrays=feeds)
                times_ns = model.call("run", key="x", iterations=200)
            p95_ms = float(np.percentile(times_ns, 95)) / 1e6
            ctx.measurement["p95_ms"] = p95_ms    # the evidence a skeptic can check
            return ctx.decide("p95 latency", p95_ms, ctx.threshold("max_p95_ms"), unit="ms",
                              higher_is_better=False)

        def pytest_certify_gates():
            return [GateSpec("p95_latency", "95th-percentile latency within budget", p95_latency,
                             exclusive=True, defaults={"max_p95_ms": 50.0})]
    """
