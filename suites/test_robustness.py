"""Robustness gate: wrong shape, wrong dtype, NaN/Inf, an empty and an oversized batch (and for language models
an over-long prompt, an empty prompt and text that is not valid UTF-8) each give a clear error or a documented
safe result; the runtime keeps serving, and the next valid request is answered correctly."""

import pytest


@pytest.mark.robustness
def test_robustness(certify_case, certify_gate):
    certify_gate(certify_case)
