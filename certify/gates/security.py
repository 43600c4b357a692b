"""The ``security`` gate: static checks of a candidate's files (no model is loaded, no worker is started).

- **digest**: the files are the ones the plan pins (``sha256``; the baseline's too when it pins one), digested as
  ``certify digest`` and the certificate do (``certify.digests``: a manifest for multi-file models).
- **onnx** and **openvino**: ``certify.modelfiles.onnx_ir`` (external data, custom operators and extension
  opsets, metadata, the ``.bin`` holding every constant, no DTD).
- **gguf**: read with a bounded reader of its own (``certify.modelfiles.gguf_header``): counts, strings and arrays
  bounded, every tensor's data within the file, the architecture named, a chat template of sane length (recorded
  by digest: it is Jinja run at inference).
- **code**: pickle files (they run code when loaded); a Python factory or Python files in a model folder.
- **secrets**: no secret from the environment in the run's evidence (``certify.secrets``).

Every check (``certify.modelfiles.check.Check``) is recorded with its status (pass, fail, warn, not_applicable, or
not_evaluated when a package it needs is missing) and its reason; the gate fails when any check fails, and a
passing reason lists the warnings.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certify.digests import model_digest, model_files
from certify.errors import CertifyError
from certify.evidence import EVIDENCE_FILE
from certify.modelfiles.check import FAIL, KIB, MIB, NOT_APPLICABLE, NOT_EVALUATED, PASS, WARN, Check
from certify.modelfiles.gguf_header import GGUFError, gguf_extents, read_gguf, tensor_sizes
from certify.modelfiles.onnx_ir import ir_checks, onnx_checks
from certify.plan import ModelRef
from certify.secrets import scan, secret_values
from certify.verdict import GateResult, not_evaluated

if TYPE_CHECKING:
    from certify.gates.context import GateContext

MAX_CHAT_TEMPLATE = 64 * KIB
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"})
NOT_PICKLE_SUFFIXES = frozenset({".onnx", ".xml", ".gguf", ".json", ".safetensors", ".txt", ".md", ".npy", ".npz",
                                 ".model", ".jinja"})
LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's magic number, pickled


def evaluate(ctx: GateContext) -> GateResult:
    checks = inspect(ctx.case.candidate, ctx.case.model.baseline)
    checks.append(secrets_check(ctx.store.run_dir / EVIDENCE_FILE, ctx.case.id, ctx.measurement))
    ctx.measurement["checks"] = [c.to_dict() for c in checks]
    return verdict(checks)


def verdict(checks: list[Check]) -> GateResult:
    details = {"checks": [c.to_dict() for c in checks]}
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        hint = " | ".join(dict.fromkeys(c.hint for c in failed if c.hint))
        return GateResult("security", FAIL, "; ".join(f"{c.name}: {c.reason}" for c in failed),
                          hint=hint, details=details)
    missing = [c for c in checks if c.status == NOT_EVALUATED]
    if missing:
        return not_evaluated("security", "; ".join(f"{c.name}: {c.reason}" for c in missing))
    passed = [c.name for c in checks if c.status == PASS]
    warned = [f"{c.name}: {c.reason}" for c in checks if c.status == WARN]
    reason = f"{len(passed)} checks passed ({', '.join(passed)})" + (f"; warnings: {'; '.join(warned)}" if warned
                                                                      else "")
    return GateResult("security", PASS, reason, details=details)


def inspect(candidate: ModelRef, baseline: ModelRef | None = None) -> list[Check]:
    """Every static check of the candidate's files, and the baseline's pinned digest."""
    checks = [digest_check(candidate, "candidate")]
    if baseline is not None and baseline.sha256:
        checks.append(digest_check(baseline, "baseline"))
    path = candidate.file
    if not path.exists():
        return checks
    refused: CertifyError | None = None
    try:
        files = model_files(path)
    except CertifyError as exc:  # certify.digests refuses external data outside the folder: the ONNX check says so
        files, refused = [path], exc
    found = len(checks)
    for file in files:
        if file.suffix == ".onnx":
            checks += onnx_checks(file, candidate.allowed_op_domains, refused if file == path else None)
        elif file.suffix == ".xml" and (file == path or file.with_suffix(".bin").is_file()):
            checks += ir_checks(file, candidate.allowed_op_domains)
        elif file.suffix == ".gguf":
            checks += gguf_checks(file)
    if len(checks) == found and not path.is_dir():
        checks.append(Check("format", WARN, f"no format checks for {path.name} (ONNX, OpenVINO IR and GGUF files "
                            "have them): only its digest and the pickle check apply"))
    return checks + code_checks(path, files)


# --------------------------------------------------------------------------------------------------- digest

def digest_check(ref: ModelRef, role: str) -> Check:
    name = f"digest ({role})"
    try:
        digest = model_digest(ref.file)
    except (CertifyError, OSError) as exc:
        message = (exc.message if isinstance(exc, CertifyError) else str(exc)).removeprefix(f"{ref.file}: ")
        return Check(name, FAIL, f"{ref.file} cannot be digested: {message}", getattr(exc, "hint", ""))
    files = {"sha256": digest.sha256, "files": [list(f) for f in digest.files]}
    if ref.sha256 is None:
        return Check(name, WARN, f"no digest pinned in the plan for {ref.name!r}: pin sha256 = '{digest.sha256}'",
                     details=files)
    if digest.sha256 != ref.sha256:
        return Check(name, FAIL, f"{ref.file} has sha256 {digest.sha256} but the plan pins {ref.sha256}",
                     hint=f"if {ref.name!r} was rebuilt on purpose, review it and pin sha256 = '{digest.sha256}' "
                     "(certify digest prints it); otherwise it is not the model that was reviewed", details=files)
    return Check(name, PASS, f"{ref.file.name} matches the pinned sha256 {digest.sha256[:16]}...", details=files)


# --------------------------------------------------------------------------------------------------- GGUF

def gguf_checks(path: Path) -> list[Check]:
    name = "gguf structure"
    try:
        summary = read_gguf(path)
    except GGUFError as exc:
        hint = "copy or download the file again, whole" if exc.truncated else "regenerate it with llama.cpp's tools"
        return [Check(name, FAIL, f"{path.name}: {exc}", hint)]
    problems = gguf_extents(summary)
    arch = summary.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        problems.append("general.architecture is missing")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        hint = "copy or download the file again, whole" if "truncated" in " ".join(problems) else \
            "regenerate it with llama.cpp's convert/quantize tools"
        return [Check(name, FAIL, f"{path.name}: " + "; ".join(problems[:3]) + more, hint), ]
    unchecked = "" if tensor_sizes() else " (tensor sizes unchecked: install gguf)"
    structure = Check(name, PASS, f"{path.name}: GGUF v{summary.version}, architecture {arch!r}, "
                      f"{len(summary.tensors)} tensors within the file, {len(summary.metadata)} metadata keys"
                      f"{unchecked}")
    return [structure, chat_template_check(path, summary.metadata)]


def chat_template_check(path: Path, metadata: dict[str, Any]) -> Check:
    name = "gguf chat template"
    templates = {k: v for k, v in metadata.items() if k.startswith("tokenizer.chat_template") and isinstance(v, str)}
    if not templates:
        return Check(name, NOT_APPLICABLE, f"{path.name} has no chat template")
    details: dict[str, dict[str, Any]] = {
        k: {"sha256": hashlib.sha256(v.encode()).hexdigest(), "bytes": len(v.encode())} for k, v in templates.items()}
    big = [f"{k} is {d['bytes'] // KIB} KiB" for k, d in details.items() if d["bytes"] > MAX_CHAT_TEMPLATE]
    if big:
        return Check(name, FAIL, f"{path.name}: {', '.join(big)} (limit {MAX_CHAT_TEMPLATE // KIB} KiB)",
                     "a chat template is a Jinja program run on every prompt: review it and keep it small",
                     details=details)
    listed = ", ".join(f"{k} ({d['bytes']} bytes, sha256 {d['sha256'][:16]}...)" for k, d in details.items())
    return Check(name, WARN, f"{path.name} carries {listed}: some runtimes run it as Jinja at inference; review it",
                 details=details)


# --------------------------------------------------------------------------------------------------- code

def code_checks(path: Path, files: list[Path]) -> list[Check]:
    pickles = [f for f in files if is_pickle(f)]
    shown = [str(f.relative_to(path)) if path.is_dir() else f.name for f in pickles]
    pickle = (Check("pickle", FAIL, f"{', '.join(shown)}: pickle can run arbitrary code when loaded",
                    "convert the weights to safetensors (or the framework's own format) and drop the pickle files")
              if pickles else Check("pickle", PASS, f"none of the model's {len(files)} files is a pickle"))
    return [pickle, python_code_check(path, files)]


def is_pickle(file: Path) -> bool:
    """By name (.pkl, .pt, ...) or by content: torch's legacy format, a zip holding a .pkl (torch's current
    format), or a pickle stream's opening bytes. Heuristic: a pickle under another name and layout is missed."""
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return True
    if suffix in NOT_PICKLE_SUFFIXES:
        return False
    try:
        with open(file, "rb") as handle:
            head = handle.read(16)
        if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                return any(n.endswith(".pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return head.startswith(LEGACY_TORCH) or (len(head) > 2 and head[0] == 0x80 and head[1] in (4, 5)
                                             and head[2] == 0x95)


def python_code_check(path: Path, files: list[Path]) -> Check:
    name = "python code"
    if not path.is_dir():
        return Check(name, NOT_APPLICABLE, f"{path.name} is a single model file, not a folder")
    found = []
    factory = _json_key(path / "model.json", "factory")
    if isinstance(factory, str):
        found.append(f"the model folder names a Python factory ({factory}): it runs code when loaded; pin the "
                     "folder's digest (it covers the folder's files, not the factory's module)")
    if _json_key(path / "config.json", "auto_map") is not None:
        found.append("config.json has auto_map: loaders that trust remote code run the folder's Python files")
    scripts = [str(f.relative_to(path)) for f in files if f.suffix == ".py"]
    if scripts:
        found.append(f"the model folder holds Python files ({', '.join(scripts[:3])})")
    if found:
        return Check(name, WARN, "; ".join(found), details={"factory": factory, "python_files": scripts})
    return Check(name, PASS, f"{path.name} names no Python code")


def _json_key(file: Path, key: str) -> Any:
    if not file.is_file() or file.stat().st_size > MIB:
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------- secrets

def secrets_check(evidence: Path, case_id: str, measurement: dict[str, Any],
                  environ: dict[str, str] | None = None) -> Check:
    """The environment's secrets in the run's evidence so far and in this case's measurement: in this case's
    own records it fails; in another case's it warns (the certificate of the run will not be signed either way)."""
    name, secrets = "secrets in outputs", secret_values(environ)
    own = [f"{what} in this case's {file}" for file, what in
           scan([("measurement", json.dumps(measurement, default=str))], secrets)]
    others: list[str] = []
    if evidence.is_file() and scan([evidence], secrets):
        for line in evidence.read_text(encoding="utf-8", errors="replace").splitlines():
            for _, what in scan([(evidence.name, line)], secrets):
                record = _json_line(line)
                if record.get("case") == case_id:
                    own.append(f"{what} in {evidence.name} (recorded by its {record.get('gate', '?')} gate)")
                else:
                    others.append(f"{what} from {record.get('case', '?')}")
    if own:
        return Check(name, FAIL, f"secret found: {'; '.join(dict.fromkeys(own))}",
                     "something (a backend's info(), a recipe's log) copies the environment into the evidence: stop "
                     "it, rotate the secret and do not publish this run folder; the certificate will not be signed")
    if others:
        return Check(name, WARN, f"{EVIDENCE_FILE} holds {', '.join(dict.fromkeys(others))}: this run's "
                     "certificate will not be signed")
    return Check(name, PASS, f"no secret in {EVIDENCE_FILE} so far (looked for the values of {len(secrets)} "
                 "secret-looking environment variables, and PEM private keys)")


def _json_line(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
