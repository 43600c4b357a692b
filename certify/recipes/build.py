"""Build a recipe's candidate once, before it is measured.

The artifact lives in ``<cache>/recipes/<model>--<candidate>-<key>/`` where ``key`` hashes the recipe, the source
model's digest, the calibration data's digest and the versions of the tools that build it: change any of them and
the candidate is rebuilt; change nothing and it is reused. The build runs in a child process
(``python -m certify.recipes.child``) so a crash inside a tool fails that candidate only, and it is staged and
renamed into place only when complete (``certify.cache.build_once``): a failed build never leaves a partial
model that a later run would measure. ``recipe.json`` next to the artifact records how it was made.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import subprocess
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from certify.cache import build_once, cache_root
from certify.cases import safe_name
from certify.digests import file_sha256, model_digest
from certify.plan import Dataset, ModelPlan, ModelRef
from certify.recipes import Recipe, RecipeError, kind_of, unavailable

BUILD_MARKER = "recipe.json"
ERROR_MARK = "certify-recipe-error: "
GENERIC_HINT = "fix the recipe's parameters or its source model; other candidates are unaffected"
MIN_BUILD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class BuildContext:
    """Everything the build child needs (pickled to it)."""

    recipe: Recipe
    source: Path
    dataset: Dataset
    metric: str
    max_drop: float  # the policy's allowed accuracy loss, for accuracy-aware recipes
    seed: int
    out_dir: Path


def versions(recipe: Recipe) -> dict[str, str]:
    found = {}
    for name in kind_of(recipe).distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def dataset_digest(dataset: Dataset) -> str:
    return file_sha256(dataset.path) if dataset.path is not None else f"loader:{dataset.loader}"


def build_key(recipe: Recipe, source_sha256: str, dataset: Dataset, max_drop: float) -> str:
    parts = {"recipe": recipe.describe(), "source": source_sha256, "versions": versions(recipe),
             "dataset": dataset_digest(dataset) if kind_of(recipe).calibrated else None,
             "max_drop": max_drop if recipe.method == "quantize_with_accuracy_control" else None,
             "workflow": file_sha256(Path(recipe.param("config"))) if recipe.method == "workflow" else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _source(model: ModelPlan, ref: ModelRef, max_drop: float, seed: int, build: bool) -> ModelRef:
    assert ref.recipe is not None
    if ref.recipe.source == "baseline":
        return model.baseline
    parent = next(c for c in model.candidates if c.name == ref.recipe.source)
    return materialize(model, parent, max_drop=max_drop, seed=seed, build=build)


@functools.lru_cache(maxsize=64)
def materialize(model: ModelPlan, ref: ModelRef, *, max_drop: float, seed: int = 0, build: bool = True
                ) -> ModelRef:
    """``ref`` with ``path`` set to its built artifact (built now unless it exists; with ``build=False`` an
    unbuilt recipe comes back unchanged). Raises RecipeError naming the candidate when it cannot be built."""
    if ref.recipe is None:
        return ref
    problem = unavailable(ref.recipe)
    if problem:
        raise RecipeError(problem, hint=kind_of(ref.recipe).install)
    source = _source(model, ref, max_drop, seed, build)
    if source.path is None:
        return ref
    key = build_key(ref.recipe, model_digest(source.path).sha256, model.dataset, max_drop)
    target = cache_root() / "recipes" / f"{safe_name(model.name)}--{safe_name(ref.name)}-{key[:16]}"
    if not build and not (target / BUILD_MARKER).is_file():
        return ref
    context = BuildContext(ref.recipe, source.path, model.dataset, model.metric, max_drop, seed, target)
    build_once(target, BUILD_MARKER, lambda staging: _run_child(replace(context, out_dir=staging), ref.name))
    return replace(ref, path=target / json.loads((target / BUILD_MARKER).read_text())["artifact"])


def made_by(ref: ModelRef) -> dict[str, Any] | None:
    """How a built candidate was made (its recipe.json), or None for a plain file."""
    if ref.recipe is None or ref.path is None:
        return None
    marker = ref.path.parent / BUILD_MARKER
    return dict(json.loads(marker.read_text())) if marker.is_file() else None


def _run_child(context: BuildContext, name: str) -> None:
    timeout = MIN_BUILD_TIMEOUT_S
    recipe = context.recipe
    try:
        done = subprocess.run([sys.executable, "-m", "certify.recipes.child"], input=pickle.dumps(context),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RecipeError(f"recipe {recipe.tool} {recipe.method} for {name!r} did not finish in {timeout:.0f} s",
                          hint="use fewer calibration samples, or build the candidate offline") from None
    if done.returncode != 0:
        cause, hint = _cause(done)
        raise RecipeError(f"recipe {recipe.tool} {recipe.method} for {name!r} failed: {cause}",
                          hint=hint or GENERIC_HINT)


def _cause(done: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    """The child's own message and hint, or what is known of a crash (signal, last lines of output)."""
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    marked = [line.split(ERROR_MARK, 1)[1] for line in lines if ERROR_MARK in line]
    if marked:
        error = json.loads(marked[-1])
        return str(error["message"]), str(error["hint"])
    signal = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
    return f"{signal}; last output: {' | '.join(lines[-3:]) or 'none'}", ""
