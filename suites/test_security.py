"""Security gate: the model files match the digest pinned in the plan (``sha256``), ONNX external data stays
inside the model's folder, custom-operator domains and extension libraries are flagged unless the plan trusts
them (``allowed_op_domains``), GGUF metadata is sane (tensor extents within the file, bounded string and array
sizes, a chat template of sane length), and no secret from the environment appears in the run's outputs."""

import pytest


@pytest.mark.security
def test_security(certify_case, certify_gate):
    certify_gate(certify_case)
