"""The recipe build child: ``python -m certify.recipes.child`` reads a pickled BuildContext on stdin, runs the
recipe's builder into ``out_dir`` and writes ``recipe.json`` there. A failure prints one line
``certify-recipe-error: {"message": ..., "hint": ...}`` on stderr and exits 3."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from certify.digests import model_digest
from certify.errors import CertifyError
from certify.recipes import RecipeError, kind_of
from certify.recipes.build import BUILD_MARKER, ERROR_MARK, BuildContext, dataset_digest, versions

Builder = Callable[[BuildContext, "Calibration"], Path]


class Calibration:
    """The plan's dataset as calibration samples: ``samples(n)`` gives up to ``n`` single-sample feeds, keyed
    by the dataset's input names ('' for a model's only input); loaded only when a builder asks."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self._data: tuple[dict[str, np.ndarray], np.ndarray | None] | None = None

    def data(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        if self._data is None:
            from certify.measure.dataset import load_dataset

            self._data = load_dataset(self.context.dataset)
        return self._data

    def samples(self, n: int) -> list[dict[str, np.ndarray]]:
        inputs, _ = self.data()
        count = min(n, len(next(iter(inputs.values())))) if inputs else 0
        return [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(count)]


def keyed_samples(samples: list[dict[str, np.ndarray]], inputs: list[tuple[str, tuple[str, ...], Any]]
                  ) -> list[dict[str, np.ndarray]]:
    """Calibration samples keyed by a model's inputs, each given as (name, names a dataset key may use, dtype):
    a dataset's one unnamed array goes to a model's only input; a missing input is a RecipeError naming it."""
    if not samples:
        raise RecipeError("the plan's dataset gave no calibration samples", hint="check the dataset file")
    out = []
    for sample in samples:
        if set(sample) == {""} and len(inputs) == 1:
            sample = {inputs[0][0]: sample[""]}
        found = {name: next((k for k in aliases if k in sample), None) for name, aliases, _ in inputs}
        missing = [name for name, key in found.items() if key is None]
        if missing:
            has = sorted(sample) if set(sample) != {""} else "one unnamed array"
            raise RecipeError(f"calibration data has no array for model input(s) {missing}; it has {has}",
                              hint="map model inputs to dataset keys in the plan's dataset.inputs table")
        out.append({name: np.asarray(sample[str(found[name])]).astype(dtype) for name, _, dtype in inputs})
    return out


def build(context: BuildContext) -> dict[str, Any]:
    kind = kind_of(context.recipe)
    module, _, attr = kind.builder.partition(":")
    builder: Builder = getattr(importlib.import_module(module), attr)
    started = time.time()
    artifact = builder(context, Calibration(context))
    if not artifact.exists() or context.out_dir.resolve() not in artifact.resolve().parents:
        raise CertifyError(f"the builder did not write its model into {context.out_dir} (got {artifact})")
    return {
        "artifact": artifact.relative_to(context.out_dir).as_posix(), "recipe": context.recipe.describe(),
        "source": {"path": str(context.source), "sha256": model_digest(context.source).sha256},
        "dataset_sha256": dataset_digest(context.dataset) if kind.calibrated else None,
        "versions": versions(context.recipe), "seconds": round(time.time() - started, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": model_digest(artifact).sha256,
        "facts": _facts(context, artifact),
    }


def _facts(context: BuildContext, artifact: Path) -> dict[str, Any]:
    """What the tool says it did, where it records that (ONNX Runtime: how many nodes it quantized; llama.cpp: a
    requantization of an already quantized source, ``certify.recipes.llamacpp.requantization``)."""
    if context.recipe.tool == "llamacpp":
        from certify.recipes.llamacpp import quantized_tensors, requantization

        found = requantization(quantized_tensors(context.source), str(context.recipe.param("type", "Q8_0")).upper())
        return {"requantized": found} if found else {}
    if context.recipe.tool != "onnxruntime":
        return {}
    from certify.recipes.ort import quantization_facts

    return quantization_facts(artifact)


def main() -> int:
    context: BuildContext = pickle.loads(sys.stdin.buffer.read())
    try:
        manifest = build(context)
    except CertifyError as exc:
        return _failed(exc.message, exc.hint)
    except Exception as exc:  # a tool's own failure: its type and first line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _failed(f"{type(exc).__name__}: {first}", "")
    (context.out_dir / BUILD_MARKER).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def _failed(message: str, hint: str) -> int:
    print(ERROR_MARK + json.dumps({"message": message, "hint": hint}), file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
