"""Fallback gate: (1) a preferred device that is missing here is replaced by the deployment's fallback chain,
whose outputs match the CPU reference, and the device that really ran is recorded (``device_fallback = false``
makes a silent fallback a failure); (2) when the candidate cannot load, its configured ``fallback`` model
serves correct results; (3) after a fault injected mid-stream (the worker is killed), service recovers within
``max_recovery_s`` and answers correctly."""

import pytest


@pytest.mark.fallback
def test_fallback(certify_case, certify_gate):
    certify_gate(certify_case)
