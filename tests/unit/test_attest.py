"""DSSE signing with Ed25519: keys, round trip, and every kind of tampering refused with its reason."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from certify import attest
from certify.attest import VerificationError
from certify.errors import CertifyError

STATEMENT = {"_type": attest.STATEMENT_TYPE, "subject": [{"name": "m/c", "digest": {"sha256": "ab" * 32}}],
             "predicateType": attest.PREDICATE_TYPE, "predicate": {"verdict": "certified", "note": "ünïcode"}}


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]:
    private, public, keyid = attest.generate_keypair(tmp_path / "release.key")
    signer = attest.load_signer(private, environ={})
    assert signer is not None and signer.keyid == keyid
    return signer, dict([attest.load_public_key(public)])


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    private, public, keyid = attest.generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.name == "k.pub" and b"PUBLIC KEY" in public.read_bytes()
    assert attest.load_public_key(public)[0] == keyid
    with pytest.raises(CertifyError, match="already exists"):
        attest.generate_keypair(tmp_path / "k")


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private, _, _ = attest.generate_keypair(tmp_path / "k")
    private.chmod(0o644)
    with pytest.raises(CertifyError, match="readable by group or others") as err:
        attest.load_signer(private, environ={})
    assert "chmod 600" in err.value.hint


def test_key_from_environment_and_encrypted_keys(tmp_path: Path) -> None:
    private, _, keyid = attest.generate_keypair(tmp_path / "k")
    signer = attest.load_signer(None, environ={attest.KEY_ENV: private.read_text()})
    assert signer is not None and signer.keyid == keyid and signer.source == "$CERTIFY_SIGNING_KEY"
    assert attest.load_signer(None, environ={}) is None
    locked, _, locked_id = attest.generate_keypair(tmp_path / "locked", passphrase=b"s3cret")
    with pytest.raises(CertifyError, match="encrypted"):
        attest.load_signer(locked, environ={})
    opened = attest.load_signer(locked, environ={attest.PASSPHRASE_ENV: "s3cret"})
    assert opened is not None and opened.keyid == locked_id


def test_wrong_key_files_get_clear_errors(tmp_path: Path) -> None:
    private, public, _ = attest.generate_keypair(tmp_path / "k")
    with pytest.raises(CertifyError, match="is a private key"):
        attest.load_public_key(private)
    public.chmod(0o600)
    with pytest.raises(CertifyError, match="not a readable PEM private key"):
        attest.load_signer(public, environ={})
    with pytest.raises(CertifyError, match="does not exist"):
        attest.load_signer(tmp_path / "missing", environ={})


def test_round_trip(keypair: tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]) -> None:
    signer, trusted = keypair
    envelope = attest.sign_statement(STATEMENT, signer)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == signer.keyid
    statement, keyid = attest.open_envelope(envelope, trusted)
    assert statement == STATEMENT and keyid == signer.keyid


def test_flipping_any_byte_of_the_payload_is_refused(
        keypair: tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]) -> None:
    signer, trusted = keypair
    envelope = attest.sign_statement(STATEMENT, signer)
    payload = base64.b64decode(envelope["payload"])
    for i in range(len(payload)):
        altered = bytearray(payload)
        altered[i] ^= 0x01
        tampered = {**envelope, "payload": base64.b64encode(bytes(altered)).decode()}
        with pytest.raises(VerificationError, match="does not verify") as err:
            attest.open_envelope(tampered, trusted)
        assert err.value.check == "signature"


def test_another_key_and_a_forged_signature_are_refused(
        tmp_path: Path, keypair: tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]) -> None:
    signer, trusted = keypair
    other = attest.dev_signer()
    with pytest.raises(VerificationError, match="not among the trusted keys"):
        attest.open_envelope(attest.sign_statement(STATEMENT, other), trusted)
    forged = attest.sign_statement(STATEMENT, other)
    forged["signatures"][0]["keyid"] = signer.keyid  # claims the trusted key's id
    with pytest.raises(VerificationError, match="does not verify"):
        attest.open_envelope(forged, trusted)
    with pytest.raises(VerificationError, match="not signed"):
        attest.open_envelope({**forged, "signatures": []}, trusted)


def test_wrong_payload_and_predicate_types_are_refused(
        keypair: tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]) -> None:
    signer, trusted = keypair
    envelope = attest.sign_statement(STATEMENT, signer)
    with pytest.raises(VerificationError) as err:
        attest.open_envelope({**envelope, "payloadType": "application/json"}, trusted)
    assert err.value.check == "payload-type"
    other = attest.sign_statement({**STATEMENT, "predicateType": "https://slsa.dev/provenance/v1"}, signer)
    with pytest.raises(VerificationError) as err:
        attest.open_envelope(other, trusted)
    assert err.value.check == "predicate-type"


def test_envelope_verifies_with_securesystemslib(
        keypair: tuple[attest.Signer, dict[str, attest.Ed25519PublicKey]]) -> None:
    """Interoperability: an independent DSSE implementation accepts our envelopes."""
    dsse = pytest.importorskip("securesystemslib.dsse")
    from securesystemslib.signer import SSlibKey

    signer, _ = keypair
    envelope = dsse.Envelope.from_dict(attest.sign_statement(STATEMENT, signer))
    key = SSlibKey.from_crypto(signer.key.public_key(), keyid=signer.keyid)
    assert signer.keyid in envelope.verify([key], 1)
    assert json.loads(envelope.payload) == STATEMENT
