"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from certify import attest
from tests.helpers.signed import write_public_key


@pytest.fixture
def signer() -> attest.Signer:
    """A throwaway signing key."""
    return attest.dev_signer()


@pytest.fixture
def pub(tmp_path: Path, signer: attest.Signer) -> Path:
    """The signer's public key, as a file a verifier is given."""
    return write_public_key(tmp_path / "dev.pub", signer)


@pytest.fixture
def recipe_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty build cache for recipes, and no in-process memory of earlier builds."""
    from certify.recipes.build import materialize

    monkeypatch.setenv("CERTIFY_CACHE_DIR", str(tmp_path / "cache"))
    materialize.cache_clear()
    return tmp_path / "cache"
