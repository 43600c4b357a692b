"""The ``security`` gate's checks of ONNX models and OpenVINO IRs (the files are parsed, no model is loaded).

- **onnx**: external data stays inside the model's folder and within its files; every operator comes from a
  domain ONNX or ONNX Runtime implements, or one the plan trusts (``allowed_op_domains``); metadata of sane size.
- **openvino**: every layer is from a standard opset (or a trusted one); the ``.bin`` holds every constant the
  ``.xml`` declares; the XML declares no DTD or entities (an XML-bomb and external-entity vector).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from certify.digests import onnx_tensors
from certify.errors import CertifyError
from certify.modelfiles.check import FAIL, KIB, NOT_APPLICABLE, NOT_EVALUATED, PASS, WARN, Check

ONNX_DOMAINS = frozenset({  # what onnx.defs and onnxruntime's CPU kernels implement: no custom-op library needed
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training", "com.microsoft",
    "com.microsoft.nchwc"})
IR_OPSETS = re.compile(r"opset\d+|ie_internal_opset")  # built into libopenvino; anything else is an extension
# The tokenizer IRs optimum-intel writes beside an LLM use openvino-tokenizers' operators (opset "extension"): their
# native code is the installed openvino-tokenizers package's, loaded by openvino-genai, never the folder's. Only
# these names in these files are trusted that way; any other extension operator still needs allowed_op_domains.
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
TOKENIZER_OPS = frozenset((
    "BPETokenizer", "ByteFallback", "BytesToChars", "CaseFold", "CharsToBytes", "CombineSegments", "EqualStr",
    "FuzeRagged", "NormalizeUnicode", "RaggedToDense", "RaggedToRagged", "RaggedToSparse", "RegexNormalization",
    "RegexSplit", "SentencepieceDetokenizer", "SentencepieceStreamDetokenizer", "SentencepieceTokenizer",
    "SpecialTokensSplit", "StringTensorPack", "StringTensorUnpack", "TrieTokenizer", "Truncate", "UTF8Validate",
    "UnigramTokenizer", "VocabDecoder", "VocabEncoder", "WordpieceTokenizer"))
MAX_METADATA_VALUE, MAX_METADATA_TOTAL = 16 * KIB, 64 * KIB


# --------------------------------------------------------------------------------------------------- ONNX

def onnx_checks(path: Path, allowed: tuple[str, ...] = (), refused: CertifyError | None = None) -> list[Check]:
    """``refused``: what ``certify.digests.model_files`` said of the file's external data, if it refused it."""
    try:
        import onnx
    except ImportError:
        return [Check("onnx", NOT_EVALUATED, f"{path.name} not inspected: the onnx package is not installed",
                      hint="pip install onnx")]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not a model
        return [Check("onnx structure", FAIL, f"{path.name} is not a readable ONNX model "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")]
    return [onnx_external_data(path, model, refused), onnx_operators(path, model, allowed),
            onnx_metadata(path, model)]


def onnx_external_data(path: Path, model: Any, refused: CertifyError | None = None) -> Check:
    name = "onnx external data"
    if refused is not None:  # certify.digests refuses a location outside the folder (absolute, '..', symlink)
        return Check(name, FAIL, refused.message, refused.hint or "keep an ONNX model's external data next to it")
    folder = path.parent.resolve()
    refs = list(_external_refs(model))
    problems = [p for p in (_external_problem(folder, *ref) for ref in refs) if p]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check(name, FAIL, f"{path.name}: " + "; ".join(problems[:3]) + more,
                     "keep external data files next to the model, whole: re-save it with onnx.save_model("
                     "..., save_as_external_data=True)")
    if not refs:
        return Check(name, NOT_APPLICABLE, f"{path.name} keeps every tensor inside the file")
    locations = sorted({location for _, location, _, _ in refs})
    return Check(name, PASS, f"{path.name}: {len(refs)} tensors in {', '.join(locations)}, inside the model's folder "
                 "and within the files", details={"locations": locations})


def _external_problem(folder: Path, tensor: str, location: str, offset: int, length: int | None) -> str:
    """What is wrong with one tensor's external data, or ''."""
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or folder not in target.parents:
        return f"tensor {tensor!r}: external data {location!r} lies outside the model's folder"
    if not target.is_file():
        return f"tensor {tensor!r}: external data file {location!r} is missing"
    size = target.stat().st_size
    if offset + (length or 0) > size:
        return (f"tensor {tensor!r}: bytes {offset}..{offset + (length or 0)} lie past the end of {location} "
                f"({size} bytes): truncated")
    return ""


def _external_refs(model: Any) -> Iterator[tuple[str, str, int, int | None]]:
    import onnx

    for tensor in onnx_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        length = entries.get("length")
        yield (tensor.name, entries.get("location", ""), _int(entries.get("offset", "0")),
               _int(length) if length is not None else None)


def _int(text: str) -> int:
    try:
        return max(int(text), 0)
    except ValueError:
        return 0


def _onnx_nodes(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_nodes(sub.node)


def onnx_operators(path: Path, model: Any, allowed: tuple[str, ...] = ()) -> Check:
    local = {(f.domain, f.name) for f in model.functions}
    nodes = list(_onnx_nodes(model.graph.node))
    for function in model.functions:
        nodes += _onnx_nodes(function.node)
    custom: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        if node.domain not in ONNX_DOMAINS and (node.domain, node.op_type) not in local:
            custom[node.domain].append(node.op_type)
    untrusted = {d: ops for d, ops in custom.items() if d not in allowed}
    details = {"custom_domains": {d: len(ops) for d, ops in custom.items()},
               "local_functions": sorted(f"{d}:{n}" for d, n in local)}
    functions = (f"; {len(local)} model-local functions ({', '.join(details['local_functions'])}) are defined in "
                 "the model and inlined, their bodies checked" if local else "")
    if untrusted:
        domain, ops = sorted(untrusted.items())[0]
        others = f" (also {', '.join(repr(d) for d in sorted(untrusted) if d != domain)})" if len(untrusted) > 1 else ""
        return Check("onnx operators", FAIL, f"{path.name}: custom operators from domain {domain!r} ({len(ops)} nodes: "
                     f"{', '.join(dict.fromkeys(ops))}) need a custom-op library: trust it explicitly with "
                     f"allowed_op_domains = {sorted(untrusted)!r}{others}",
                     hint="a custom-op library is native code loaded into the runtime: trust only one you built "
                     "or reviewed", details=details)
    trusted = f"; custom domains trusted by the plan: {', '.join(sorted(custom))}" if custom else ""
    return Check("onnx operators", PASS, f"{path.name}: {len(nodes)} nodes, all from standard ONNX / ONNX Runtime "
                 f"domains{trusted}{functions}", details=details)


def onnx_metadata(path: Path, model: Any) -> Check:
    props = [(p.key, p.value) for p in model.metadata_props]
    total = sum(len(k) + len(v) for k, v in props) + len(model.doc_string)
    big = [k for k, v in props if len(v) > MAX_METADATA_VALUE]
    odd = [repr(k) for k, _ in props if not k.isprintable()]
    details = {"entries": len(props), "bytes": total}
    if big or odd or total > MAX_METADATA_TOTAL:
        found = [f"{len(big)} values over {MAX_METADATA_VALUE // KIB} KiB ({', '.join(big[:3])})" if big else "",
                 f"keys with control characters ({', '.join(odd[:3])})" if odd else "",
                 f"{total // KIB} KiB of metadata and doc string" if total > MAX_METADATA_TOTAL else ""]
        return Check("onnx metadata", WARN, f"{path.name}: unusual metadata: {', '.join(f for f in found if f)}",
                     details=details)
    return Check("onnx metadata", PASS, f"{path.name}: {len(props)} metadata entries, {total} bytes", details=details)


# --------------------------------------------------------------------------------------------------- OpenVINO IR

def ir_checks(xml: Path, allowed: tuple[str, ...] = ()) -> list[Check]:
    import xml.etree.ElementTree as ET

    name = "openvino structure"
    data = xml.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return [Check(name, FAIL, f"{xml.name} is UTF-16 encoded: an OpenVINO IR is UTF-8")]
    text = data.decode("utf-8", "replace")
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        return [Check(name, FAIL, f"{xml.name} declares a DTD or entities (<!DOCTYPE / <!ENTITY): an XML-bomb and "
                      "external-entity vector that no OpenVINO IR needs", "regenerate it with openvino.save_model")]
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        return [Check(name, FAIL, f"{xml.name} is not well-formed XML ({exc})")]
    if root.tag != "net":
        return [Check(name, FAIL, f"{xml.name} is not an OpenVINO IR: its root element is <{root.tag}>, not <net>")]
    layers = list(root.iter("layer"))
    return [ir_operators(xml, layers, allowed), ir_weights(xml, layers)]


def ir_operators(xml: Path, layers: list[Any], allowed: tuple[str, ...] = ()) -> Check:
    extensions: dict[str, list[str]] = defaultdict(list)
    tokenizer_ops = 0
    for layer in layers:
        version, kind = layer.get("version", ""), layer.get("type", "?")
        if xml.name in TOKENIZER_IRS and version == "extension" and kind in TOKENIZER_OPS:
            tokenizer_ops += 1
        elif not IR_OPSETS.fullmatch(version):
            extensions[version or "(no version)"].append(kind)
    untrusted = {v: types for v, types in extensions.items() if v not in allowed}
    if untrusted:
        opset, types = sorted(untrusted.items())[0]
        return Check("openvino operators", FAIL, f"{xml.name}: {len(types)} layers from opset {opset!r} "
                     f"({', '.join(dict.fromkeys(types))}) are not in OpenVINO's standard opsets and need an "
                     f"extension library: trust it explicitly with allowed_op_domains = {sorted(untrusted)!r}",
                     hint="an OpenVINO extension is native code loaded into the runtime: trust only one you built "
                     "or reviewed", details={"extensions": {v: len(t) for v, t in extensions.items()}})
    trusted = f"; extension opsets trusted by the plan: {', '.join(sorted(extensions))}" if extensions else ""
    if tokenizer_ops:
        trusted += (f"; {tokenizer_ops} openvino-tokenizers operators, run by the installed openvino-tokenizers "
                    "package, not by code from the model folder")
    return Check("openvino operators", PASS, f"{xml.name}: {len(layers)} layers from standard opsets{trusted}")


def ir_weights(xml: Path, layers: list[Any]) -> Check:
    name, weights = "openvino weights", xml.with_suffix(".bin")
    spans = []
    for layer in layers:
        data = layer.find("data")
        if data is not None and "offset" in data.attrib and "size" in data.attrib:
            try:
                spans.append((layer.get("name", "?"), int(data.get("offset", "")), int(data.get("size", ""))))
            except ValueError:
                return Check(name, FAIL, f"{xml.name}: layer {layer.get('name')!r} has a non-numeric offset/size")
    if not spans:
        return Check(name, NOT_APPLICABLE, f"{xml.name} declares no constants read from a .bin")
    if not weights.is_file():
        return Check(name, FAIL, f"{weights.name} is missing: {len(spans)} constants of {xml.name} are read from it",
                     "keep the .bin next to its .xml, with the same name")
    size = weights.stat().st_size
    beyond = [(n, o, s) for n, o, s in spans if o < 0 or s < 0 or o + s > size]
    if beyond:
        n, o, s = beyond[0]
        return Check(name, FAIL, f"{weights.name} is {size} bytes but {len(beyond)} of {len(spans)} constants lie "
                     f"past its end (e.g. {n!r}: bytes {o}..{o + s}): truncated, or the .bin of another .xml",
                     "re-export the IR (openvino.save_model) and copy both files whole")
    return Check(name, PASS, f"{weights.name} ({size} bytes) holds all {len(spans)} constants of {xml.name}")
