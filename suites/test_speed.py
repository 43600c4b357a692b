"""Speed and stability gates, from one paired run of baseline and candidate (interleaved A B B A blocks on
identical inputs, each model in its own worker process, never concurrently with other measurements).

- speed: median speedup >= ``min_speedup`` with a bootstrap interval, decided on its lower bound by default;
- stability: the candidate's p99/p50, coefficient of variation and drift within the policy's bounds.
"""

import pytest


@pytest.mark.speed
def test_speed(certify_case, certify_gate):
    certify_gate(certify_case)


@pytest.mark.stability
def test_stability(certify_case, certify_gate):
    certify_gate(certify_case)
