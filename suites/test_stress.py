"""Stress gate: sustained load on one loaded candidate, from ``[stress] clients`` concurrent closed-loop clients
(and, with ``rate`` > 0, open-loop Poisson arrivals). Passes when no request failed, p99 under load stays within
``max_load_p99_ratio`` of the isolated p99, throughput does not decay by more than ``max_throughput_decay`` from
the first window to the last, resident memory grows slower than ``max_memory_growth_mib_per_min``, and sampled
outputs under load equal the same inputs' outputs in isolation."""

import pytest


@pytest.mark.stress
def test_stress(certify_case, certify_gate):
    certify_gate(certify_case)
