"""Signed certificates: an in-toto Statement v1 in a DSSE envelope, signed with Ed25519 (``cryptography``).

Keys are PEM files made by ``certify keygen``: a PKCS#8 private key (mode 0600, optionally encrypted) and its
SubjectPublicKeyInfo public key. A key's id is the sha256 of its public key's DER encoding. The private key is
read from ``--certify-sign-key PATH``, ``$CERTIFY_SIGNING_KEY`` (the PEM text itself, for CI secrets) or
``$CERTIFY_SIGNING_KEY_FILE``; it is never written into any report.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from certify.errors import CertifyError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://edge-certify.dev/certification/v1"
KEY_ENV, KEY_FILE_ENV = "CERTIFY_SIGNING_KEY", "CERTIFY_SIGNING_KEY_FILE"
PASSPHRASE_ENV = "CERTIFY_SIGNING_KEY_PASSPHRASE"
PUB_HINT = "give the .pub file made by certify keygen"


class VerificationError(CertifyError):
    """A certificate that must not be trusted; ``check`` names which check refused it."""

    def __init__(self, check: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.check = check


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey
    keyid: str
    source: str  # where the key came from (a path or an environment variable's name), never the key itself
    dev_key: bool = False


def keyid_of(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def dev_signer() -> Signer:
    """A throwaway key for demos: it lives only in memory, and certificates signed with it say so."""
    key = Ed25519PrivateKey.generate()
    return Signer(key, keyid_of(key.public_key()), "throwaway development key", dev_key=True)


def generate_keypair(private_path: Path, passphrase: bytes | None = None) -> tuple[Path, Path, str]:
    """Write a new private key (mode 0600, never overwriting) and its ``.pub``; returns both paths and the key id."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise CertifyError(f"{path} already exists", hint="choose another name; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path, keyid_of(key.public_key())


def load_signer(path: Path | None = None, environ: dict[str, str] | None = None) -> Signer | None:
    """The configured signing key, or None when none is configured."""
    env = dict(os.environ if environ is None else environ)
    passphrase = env.get(PASSPHRASE_ENV, "").encode() or None
    if path is None and env.get(KEY_ENV):
        return _signer(env[KEY_ENV].encode(), passphrase, f"${KEY_ENV}")
    if path is None and env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
    if path is None:
        return None
    _refuse_open_permissions(path)
    return _signer(path.read_bytes(), passphrase, str(path))


def _refuse_open_permissions(path: Path) -> None:
    if not path.is_file():
        raise CertifyError(f"signing key {path} does not exist", hint="make one with: certify keygen --out PATH")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CertifyError(f"signing key {path} is readable by group or others (mode {mode:04o})",
                           hint=f"a private key must be private: chmod 600 {path}")


def _signer(pem: bytes, passphrase: bytes | None, source: str) -> Signer:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise CertifyError(f"signing key {source} is encrypted", hint=f"set ${PASSPHRASE_ENV}") from None
    except ValueError as exc:
        raise CertifyError(f"signing key {source} is not a readable PEM private key ({exc})",
                           hint="give the private key made by certify keygen (not the .pub file)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CertifyError(f"signing key {source} is not an Ed25519 key", hint="make one with certify keygen")
    return Signer(key, keyid_of(key.public_key()), source)


def load_public_key(path: Path) -> tuple[str, Ed25519PublicKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertifyError(f"public key {path}: {exc.strerror}", hint=PUB_HINT) from None
    if b"PRIVATE KEY" in data:
        raise CertifyError(f"{path} is a private key", hint="verify with the public key (the .pub file)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise CertifyError(f"{path} is not a PEM public key", hint=PUB_HINT) from None
    if not isinstance(key, Ed25519PublicKey):
        raise CertifyError(f"{path} is not an Ed25519 public key", hint=PUB_HINT)
    return keyid_of(key), key


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_statement(statement: dict[str, Any], signer: Signer) -> dict[str, Any]:
    payload = canonical_json(statement)
    signature = signer.key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(signature).decode()}]}


def open_envelope(envelope: dict[str, Any], trusted: dict[str, Ed25519PublicKey]) -> tuple[dict[str, Any], str]:
    """The statement of a DSSE envelope whose signature verifies with a trusted key, and that key's id."""
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationError("payload-type", f"payloadType is {envelope.get('payloadType')!r}, "
                                f"expected {PAYLOAD_TYPE!r}")
    try:
        payload = base64.b64decode(str(envelope.get("payload", "")), validate=True)
    except binascii.Error:
        raise VerificationError("signature", "the payload is not valid base64: the certificate was altered") from None
    signatures = [s for s in envelope.get("signatures", []) if isinstance(s, dict)]
    if not signatures:
        raise VerificationError("signature", "the certificate is not signed")
    keyid = _verified_by(signatures, trusted, pae(PAYLOAD_TYPE, payload))
    try:
        statement = parse_json(payload)
    except ValueError as exc:
        raise VerificationError("statement-type", f"the signed payload is not JSON this tool reads ({exc})") from None
    return check_statement(statement), keyid


def _verified_by(signatures: list[dict[str, Any]], trusted: dict[str, Ed25519PublicKey], message: bytes) -> str:
    known = [s for s in signatures if s.get("keyid") in trusted]
    if not known:
        ids = ", ".join(str(s.get("keyid", "?"))[:16] for s in signatures)
        raise VerificationError("signature", f"signed by key {ids}, which is not among the trusted keys "
                                f"({', '.join(k[:16] for k in trusted) or 'none given'})",
                                hint="pass the signer's public key with --key")
    for sig in known:
        try:
            trusted[sig["keyid"]].verify(base64.b64decode(str(sig.get("sig", ""))), message)
            return str(sig["keyid"])
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    raise VerificationError("signature", "the signature does not verify: the certificate was altered after "
                            "signing, or signed by another key with the same id")


def check_statement(statement: Any) -> dict[str, Any]:
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        found = statement.get("_type") if isinstance(statement, dict) else type(statement).__name__
        raise VerificationError("statement-type", f"not an in-toto Statement v1 (_type {found!r})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError("predicate-type", f"predicateType is {statement.get('predicateType')!r}, "
                                f"expected {PREDICATE_TYPE!r}", hint="is this a certificate made by certify?")
    if not isinstance(statement.get("predicate"), dict) or not isinstance(statement.get("subject"), list):
        raise VerificationError("statement-type", "the statement has no predicate or subject list")
    return statement


class UnreadableJSON(CertifyError):
    """A file that is there but is not JSON this tool reads: not JSON, larger than ``MAX_JSON_BYTES`` or nested
    deeper than ``MAX_JSON_DEPTH`` (a refusal of the file's content, not a usage error)."""


MAX_JSON_BYTES = 16 * 1024 * 1024  # a certificate of hundreds of candidates is a few MiB
MAX_JSON_DEPTH = 64  # a certificate nests about ten levels; far deeper is an attack on the parser, never a record


def parse_json(data: bytes | str) -> Any:
    """JSON no deeper than ``MAX_JSON_DEPTH``; ValueError (with its reason) otherwise, never a RecursionError."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (walked without recursion; stops past the limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: Path, what: str) -> Any:
    """A JSON file of at most ``MAX_JSON_BYTES``: CertifyError when it cannot be read, UnreadableJSON when its
    content is not JSON, too large or too deep."""
    hint = "give the certificate.json of a run"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise CertifyError(f"{what} {path}: {exc.strerror}", hint=hint) from None
    if len(data) > MAX_JSON_BYTES:
        raise UnreadableJSON(f"{what} {path} is larger than {MAX_JSON_BYTES / 2**20:g} MiB: not a "
                             "certificate this tool wrote", hint=hint)
    try:
        return parse_json(data)
    except ValueError as exc:
        raise UnreadableJSON(f"{what} {path} is not JSON this tool reads ({exc})", hint=hint) from None


def read_unverified(path: Path) -> tuple[dict[str, Any], str | None]:
    """The statement of a certificate (DSSE envelope) or an unsigned statement, without checking signatures,
    and the signing key id if any: for reports and comparisons; trust decisions use ``open_envelope``."""
    data = read_json(path, "certificate")
    if isinstance(data, dict) and "payload" in data:
        try:
            statement = parse_json(base64.b64decode(str(data["payload"]), validate=True))
        except (binascii.Error, ValueError):
            raise CertifyError(f"certificate {path} has an unreadable payload", hint="it was damaged") from None
        keyid = next((str(s.get("keyid")) for s in data.get("signatures", []) if isinstance(s, dict)), None)
        return check_statement(statement), keyid
    return check_statement(data), None
