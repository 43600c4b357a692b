"""Accuracy gate: the candidate keeps at least ``min_accuracy_retention`` of its baseline's quality on the
plan's dataset (paired bootstrap interval; decided on its lower bound by default)."""

import pytest


@pytest.mark.accuracy
def test_accuracy(certify_case, certify_gate):
    certify_gate(certify_case)
