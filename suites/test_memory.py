"""Memory gate: the candidate's working set (peak resident memory of a fresh worker after load and inference,
minus its footprint before the load) is at least ``min_memory_reduction`` below the baseline's."""

import pytest


@pytest.mark.memory
def test_memory(certify_case, certify_gate):
    certify_gate(certify_case)
