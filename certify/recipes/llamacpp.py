"""llama.cpp quantization recipe: a GGUF source (F32, F16 or BF16) quantized with ``llama_model_quantize``.

Parameters: ``type`` (one of ``QUANT_TYPES``, default Q8_0), ``allow_requantize`` (default false) and
``threads`` (default: llama.cpp's, all hardware threads). llama.cpp's default quantization parameters apply
otherwise: K-quant mixes such as Q4_K_M keep some tensors (attention V, FFN down) in a higher type, as the
``llama-quantize`` tool does.

A failed quantization fails as a whole: llama.cpp may leave a partial output file behind, which is deleted, and
the error names the type, the source and llama.cpp's reason. Re-quantizing an already quantized source compounds
two rounding errors; it is refused up front (llama.cpp would refuse it too, after it began writing) unless
``allow_requantize = true``. A requantization to more bits than the source's (Q8_0 from Q4_K_M, "upward") cannot
recover what the source's rounding lost: allowed, it is recorded in ``recipe.json`` (``facts.requantized``,
``requantization``) and the accuracy verdict says so.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certify.recipes import GGUF_TYPES, RecipeError

if TYPE_CHECKING:
    from certify.recipes.build import BuildContext
    from certify.recipes.child import Calibration

QUANT_TYPES = GGUF_TYPES
FLOAT_TYPES = {"F32", "F16", "BF16"}  # GGML tensor types that are not quantized
DEFAULT_TYPE = "Q8_0"
ARTIFACT = "model-{type}.gguf"
QUANTIZE_FAILED = "failed to quantize: "


def _lc() -> Any:
    import llama_cpp

    return llama_cpp


def ftype_of(name: str) -> int:
    """'Q4_K_M' -> LLAMA_FTYPE_MOSTLY_Q4_K_M; a RecipeError for a type this llama.cpp does not have."""
    value = getattr(_lc(), f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if name.upper() not in QUANT_TYPES or not isinstance(value, int):
        raise RecipeError(f"llama.cpp quantize: unknown type {name!r}",
                          hint=f"use one of {', '.join(QUANT_TYPES)}")
    return value


def quantized_tensors(source: Path) -> dict[str, int]:
    """How many of the source GGUF's tensors have each quantized (not F32/F16/BF16) type, read with ``gguf``."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(source))
    except Exception as exc:  # gguf raises ValueError/IndexError/... on a truncated or foreign file
        raise RecipeError(f"llama.cpp quantize: cannot read {source} as GGUF: {exc}",
                          hint="the file is truncated, corrupt or not a GGUF model: convert or download it "
                               "again and compare its sha256") from None
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in FLOAT_TYPES:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def nominal_bits(kind: str) -> int:
    """The nominal bits of a GGML/ftype name: Q4_K_M -> 4, Q8_0 -> 8, IQ3_S -> 3, F16/BF16 -> 16, F32 -> 32."""
    digits = "".join(c for c in kind.upper().lstrip("IQBF").split("_")[0] if c.isdigit())
    return int(digits) if digits else 32


def requantization(source_tensors: dict[str, int], target: str) -> dict[str, Any] | None:
    """How ``target`` relates to a quantized source (None for a float source): the source's dominant quantized
    type and bits, and whether the target has more bits (``upward``: it can be no more faithful than the source,
    whose rounding it keeps, only larger)."""
    if not source_tensors:
        return None
    dominant = max(sorted(source_tensors), key=lambda k: source_tensors[k])
    source_bits, target_bits = nominal_bits(dominant), nominal_bits(target)
    return {"source_tensors": dict(sorted(source_tensors.items())), "source_type": dominant,
            "source_bits": source_bits, "target": target, "target_bits": target_bits,
            "upward": target_bits > source_bits}


def quantize(context: BuildContext, calibration: Calibration) -> Path:
    """Quantize the source GGUF to ``type`` into ``out_dir/model-<type>.gguf``."""
    recipe, source = context.recipe, context.source
    name = str(recipe.param("type", DEFAULT_TYPE)).upper()
    ftype = ftype_of(name)
    if source.suffix.lower() != ".gguf":
        raise RecipeError(f"llama.cpp quantize needs a GGUF source model, got {source.name}",
                          hint="convert the model to GGUF first (llama.cpp's convert_hf_to_gguf.py, --outtype f16)")
    quantized = quantized_tensors(source)
    allow = bool(recipe.param("allow_requantize", False))
    if quantized and not allow:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(quantized.items()))
        facts = requantization(quantized, name)
        upward = (f"; {name} has more bits than its {facts['source_type']} weights, so it could only be larger, "
                  "never more faithful" if facts and facts["upward"] else "")
        raise RecipeError(f"llama.cpp quantize {name}: the source {source.name} is already quantized (tensors: "
                          f"{kinds}){upward}",
                          hint="quantize from the F32/F16 model (set the recipe's 'from' to it), or set "
                               "allow_requantize = true and accept the compounded error (an upward one is marked "
                               "in the verdict)")
    out = context.out_dir / ARTIFACT.format(type=name)
    run_quantize(source, out, ftype, allow_requantize=allow, threads=int(recipe.param("threads", 0)), name=name)
    return out


def run_quantize(source: Path, out: Path, ftype: int, *, allow_requantize: bool, threads: int, name: str) -> None:
    """llama_model_quantize with its default parameters; a non-zero return leaves no file behind."""
    from certify.backends.llamacpp import LogCapture

    lc, log = _lc(), LogCapture()
    params = lc.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, allow_requantize, threads
    log.start()
    try:
        code = lc.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        log.stop()
    if code != 0 or not out.is_file():
        out.unlink(missing_ok=True)
        errors = log.errors()
        cause = errors[-1].rsplit(QUANTIZE_FAILED, 1)[-1] if errors else f"llama_model_quantize returned {code}"
        hint = ("quantize from the F32/F16 GGUF, or set allow_requantize = true" if "requantiz" in cause else
                "check that the source loads with llama.cpp and that the cache folder has free space")
        raise RecipeError(f"llama.cpp quantize {name} of {source.name} failed: {cause}", hint=hint)
