"""Loading the certification plan: models, baseline, candidates, dataset, metric, target hardware and policy.

A plan is TOML (``certify.toml`` or ``[tool.certify]`` in ``pyproject.toml``). It is validated once, when
loaded, and is frozen afterwards: every error names the file, the key and, for a typo, a did-you-mean.
Relative paths are resolved against the plan file's folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from certify.errors import PlanError, did_you_mean
from certify.frameworks import FRAMEWORKS
from certify.gates.registry import GATE_NAMES
from certify.hardware import DEVICES, PLATFORMS
from certify.metrics import METRICS, MetricError, metric_for
from certify.plan.paths import PathProblem, usable_path
from certify.plan.types import (
    NOISE_OPTIONS,
    Dataset,
    Layout,
    Measure,
    ModelPlan,
    ModelRef,
    Plan,
    Stress,
    Tensor,
)
from certify.policy import POLICIES, THRESHOLD_TYPES, Policy
from certify.recipes import Recipe, check_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_REQUIRED = object()


class _Table:
    """A TOML table being validated; knows its file and key path for error messages."""

    def __init__(self, data: Any, file: str, where: str) -> None:
        if not isinstance(data, dict):
            raise PlanError(file, where, f"expected a table, got {type(data).__name__}")
        self.data, self.file, self.where = data, file, where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, message: str, hint: str = "") -> PlanError:
        return PlanError(self.file, self.key(name), message, hint=hint)

    def check_keys(self, allowed: set[str]) -> None:
        for name in self.data:
            if name not in allowed:
                raise self.error(
                    name,
                    f"unknown key{did_you_mean(name, allowed)}",
                    hint=f"allowed keys here: {', '.join(sorted(allowed))}",
                )

    def get(self, name: str, typ: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "required key is missing")
            return default
        value = self.data[name]
        ok = isinstance(value, typ) and not (isinstance(value, bool) and typ in (int, float, (int, float)))
        if not ok:
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.error(name, f"expected {want}, got {type(value).__name__} {value!r}")
        self._check_finite(name, value)
        return value

    def _check_finite(self, name: str, value: Any) -> None:
        """Every number read from the plan, also one nested in a list or table (metric params, options), is finite:
        TOML's ``nan`` and ``inf`` compare false with everything, so a check or a threshold would silently pass."""
        found = _non_finite(value)
        if found is not None:
            where, number = found
            leaf = (name + where).rsplit(".", 1)[-1]
            use = "a threshold can be compared with" if leaf in THRESHOLD_TYPES else "the harness can use"
            raise self.error(name + where, f"{number} is not a number {use}", hint="write a finite number")

    def sub(self, name: str) -> _Table:
        return _Table(self.get(name, dict), self.file, self.key(name))


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """(the key suffix, the number) of the first nan or inf in ``value``, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


def _read_toml(path: str | Path, what: str) -> tuple[Any, Path, str]:
    """The certify table of a TOML file (``[tool.certify]`` in a pyproject.toml), its path and key prefix."""
    source = Path(path).resolve()
    if not source.is_file():
        raise PlanError(str(path), "(file)", f"{what} file not found", hint="check the path")
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(str(source), "(syntax)", f"not valid TOML: {exc}") from None
    if source.name == "pyproject.toml":
        raw = raw.get("tool", {}).get("certify")
        if raw is None:
            raise PlanError(str(source), "tool.certify", "no [tool.certify] table in this pyproject.toml")
        return raw, source, "tool.certify"
    return raw, source, ""


def load_plan(path: str | Path) -> Plan:
    """Read, validate and freeze a plan. Raises PlanError naming the file and key."""
    raw, source, where = _read_toml(path, "plan")
    return _parse(raw, source, where)


def load_policy(spec: str) -> Policy:
    """A policy by name (``edge-strict``) or from a TOML file's ``policy`` key, written as in a plan."""
    if spec in POLICIES:
        return POLICIES[spec]
    if not Path(spec).is_file():
        raise PlanError(spec, "(policy)", f"neither a known policy{did_you_mean(spec, POLICIES)} nor a file",
                        hint=f"known policies: {', '.join(POLICIES)}; or a TOML file with a 'policy' table")
    raw, source, where = _read_toml(spec, "policy")
    top = _Table(raw, str(source), where)
    if "policy" not in top.data:
        raise top.error("policy", "this file has no 'policy' key", hint='write policy = "edge-strict" or [policy]')
    return _policy(top)


def find_plan(rootdir: Path) -> Path | None:
    """``certify.toml`` in rootdir, else a pyproject.toml that has ``[tool.certify]``."""
    candidate = rootdir / "certify.toml"
    if candidate.is_file():
        return candidate
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        if "certify" in data.get("tool", {}):
            return pyproject
    return None


def _parse(raw: Any, source: Path, where: str) -> Plan:
    top = _Table(raw, str(source), where)
    top.check_keys({"name", "policy", "measure", "stress", "models"})
    models_raw = top.get("models", list)
    if not models_raw:
        raise top.error("models", "at least one [[models]] entry is required")
    measure = _measure(top)
    models = tuple(_model(_Table(m, top.file, f"{top.key('models')}[{i}]"), source.parent, measure.threads)
                   for i, m in enumerate(models_raw))
    _unique([m.name for m in models], top, "models", "model name")
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
    return Plan(
        source=source,
        name=top.get("name", str, source.stem),
        policy=_policy(top),
        measure=measure,
        models=models,
        digest="sha256:" + digest,
        stress=_stress(top),
    )


def _stress(top: _Table) -> Stress:
    if "stress" not in top.data:
        return Stress()
    table, defaults = top.sub("stress"), Stress()
    table.check_keys(set(defaults.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key in defaults.__dataclass_fields__:
        default = getattr(defaults, key)
        value = table.get(key, (int, float) if isinstance(default, float) else int, default)
        if value < 0 or (value == 0 and key != "rate"):
            raise table.error(key, f"must be positive, got {value!r}")
        values[key] = value
    return Stress(**values)


def _unique(names: list[str], table: _Table, key: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise table.error(key, f"duplicate {what} {name!r}", hint=f"give each {what} its own name")
        seen.add(name)


def _policy(top: _Table) -> Policy:
    value = top.get("policy", (str, dict), "edge-default")
    table = _Table({"name": value} if isinstance(value, str) else value, top.file, top.key("policy"))
    name = table.get("name", str, "edge-default")
    if name not in POLICIES:
        raise table.error("name", f"unknown policy {name!r}{did_you_mean(name, POLICIES)}",
                          hint=f"known policies: {', '.join(POLICIES)}")
    overrides = {k: v for k, v in table.data.items() if k != "name"}
    return POLICIES[name].with_overrides(_overrides(table, overrides))


def _overrides(table: _Table, overrides: Mapping[str, Any]) -> dict[str, Any]:
    table = _Table(dict(overrides), table.file, table.where)
    table.check_keys(set(THRESHOLD_TYPES))
    checked = {}
    for key, typ in THRESHOLD_TYPES.items():
        if key in table.data:
            checked[key] = table.get(key, (int, float) if typ is float else list if typ is tuple else typ)
    if checked.get("decision", "lower_bound") not in ("lower_bound", "point"):
        raise table.error("decision", "must be 'lower_bound' or 'point'")
    if "required_gates" in checked:
        checked["required_gates"] = _gate_names(table, checked["required_gates"])
    return checked


def _gate_names(table: _Table, names: list[Any]) -> tuple[str, ...]:
    """``policy.required_gates``: built-in gate names (a project's own gate is required by its GateSpec)."""
    for name in names:
        if not isinstance(name, str) or name not in GATE_NAMES:
            raise table.error("required_gates", f"unknown gate {name!r}{did_you_mean(str(name), GATE_NAMES)}",
                              hint=f"built-in gates: {', '.join(GATE_NAMES)}; a project's own gate is required "
                              "by its GateSpec(required=True)")
    return tuple(dict.fromkeys(names))


def _measure(top: _Table) -> Measure:
    if "measure" not in top.data:
        return Measure()
    table = top.sub("measure")
    defaults = Measure()
    table.check_keys(set(defaults.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key in defaults.__dataclass_fields__:
        default = getattr(defaults, key)
        if isinstance(default, str):
            continue
        typ = (int, float) if isinstance(default, float) else int
        value = table.get(key, typ, default)
        if value < 0 or (key not in ("threads", "seed", "memory_limit_mib") and value == 0):
            raise table.error(key, f"must be positive, got {value!r}")
        values[key] = value
    if values["min_iterations"] > values["max_iterations"]:
        raise table.error("min_iterations", "is larger than max_iterations")
    if values["min_duration_s"] > values["max_duration_s"]:
        raise table.error("min_duration_s", "is larger than max_duration_s")
    return Measure(**values, noise=_noise(table))


def _noise(table: _Table) -> str:
    noise: str = table.get("noise", str, "wait")
    if noise not in NOISE_OPTIONS:
        raise table.error("noise", f"must be 'wait', 'refuse', 'warn' or 'ignore', got {noise!r}"
                          f"{did_you_mean(noise, NOISE_OPTIONS)}",
                          hint="on a host the speed preflight finds too noisy: 'wait' (the default) re-checks until "
                          "it is quiet, up to noise_wait_s, and a speed or stability verdict measured too noisy is "
                          "an ERROR; 'refuse' makes it an ERROR without waiting or measuring; 'warn' measures a "
                          "widened run and lets the verdict stand with a warning; 'ignore' neither widens nor warns")
    return noise


def _model(table: _Table, base: Path, threads: int) -> ModelPlan:
    table.check_keys({"name", "metric", "dataset", "baseline", "candidates", "inputs", "outputs", "stream", "static"})
    dataset = _dataset(table.sub("dataset"), base)
    metric, params = _metric(table, dataset)
    layout = _layout(table, dataset)
    cands_raw = table.get("candidates", list)
    if not cands_raw:
        raise table.error("candidates", "at least one candidate is required")
    candidates = tuple(
        _model_ref(_Table(c, table.file, f"{table.key('candidates')}[{i}]"), base, threads, layout, candidate=True)
        for i, c in enumerate(cands_raw)
    )
    _unique([c.name for c in candidates], table, "candidates", "candidate name")
    _check_recipe_sources(table, candidates)
    names = {c.name for c in candidates}
    for i, cand in enumerate(candidates):
        if cand.fallback is not None and (cand.fallback == cand.name or cand.fallback not in names | {"baseline"}):
            raise table.error(f"candidates[{i}].fallback", f"{cand.fallback!r} is not the baseline or another "
                              f"candidate{did_you_mean(cand.fallback, names - {cand.name})}",
                              hint="name the model that serves when this one fails to load: 'baseline' or a "
                              "candidate's name")
    baseline = _model_ref(table.sub("baseline"), base, threads, layout, candidate=False)
    _check_static(table, dataset, (baseline, *candidates))
    return ModelPlan(
        name=table.get("name", str),
        metric=metric,
        dataset=dataset,
        baseline=baseline,
        candidates=candidates,
        metric_params=params,
    )


def _check_static(table: _Table, dataset: Dataset, refs: tuple[ModelRef, ...]) -> None:
    """``static = true`` compiles the served shape of named inputs: an array model whose dataset names its inputs."""
    static = [r.name for r in refs if r.layout.static]
    if not static:
        return
    if dataset.text is not None:
        raise table.error("static", f"static = true ({', '.join(static)}) is for array models; a language model's "
                          "shapes are its context", hint="remove static for this model")
    if any(name == "" for name, _ in dataset.inputs):
        raise table.error("dataset.inputs", "static = true needs the model's input names: the dataset maps its "
                          "array to 'the only input'", hint="write dataset.inputs = { <input name> = '<npz key>' }")


def _metric(table: _Table, dataset: Dataset) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """``metric = "name"`` or ``metric = { name = "...", <params> }``; a name with ':' is the user's function."""
    value = table.get("metric", (str, dict), "token_agreement" if dataset.text else "top1_accuracy")
    spec = _Table({"name": value} if isinstance(value, str) else value, table.file, table.key("metric"))
    name: str = spec.get("name", str)
    params = {k: v for k, v in spec.data.items() if k != "name"}
    try:
        metric = metric_for(name, params)
    except MetricError as exc:
        if isinstance(value, str):
            raise table.error("metric", exc.message, hint=exc.hint) from None
        raise spec.error(exc.key or "name", exc.message, hint=exc.hint) from None
    if metric.language_model != (dataset.text is not None):
        kind = "a text dataset (language model)" if dataset.text else "an array dataset"
        raise table.error("metric", f"metric {name!r} does not fit {kind}",
                          hint="language models: token_agreement or perplexity; others: "
                          + ", ".join(m for m, v in METRICS.items() if not v.language_model))
    if metric.needs_labels and dataset.labels is None:
        raise table.error("dataset.labels", f"metric {name!r} needs labels",
                          hint="name the labels key, or a metric scored against the baseline (top1_agreement)")
    return name, _freeze(params)


def _layout(table: _Table, dataset: Dataset) -> Layout:
    """``[models.inputs.NAME]``, ``[models.outputs]``, ``[models.stream]`` and ``static``."""
    inputs = tuple(_tensor(_Table(v, table.file, table.key(f"inputs.{k}")), k, inputs=True)
                   for k, v in table.get("inputs", dict, {}).items())
    outputs_table = _Table(table.get("outputs", dict, {}), table.file, table.key("outputs"))
    score = _str_list(outputs_table, "score")
    outputs = tuple(_tensor(_Table(v, table.file, outputs_table.key(k)), k, inputs=False)
                    for k, v in outputs_table.data.items() if k != "score")
    carry: tuple[tuple[str, str], ...] = ()
    if "stream" in table.data:
        stream = table.sub("stream")
        stream.check_keys({"carry"})
        pairs = stream.get("carry", dict)
        if not pairs or not all(isinstance(v, str) for v in pairs.values()):
            raise stream.error("carry", "expected a table of output = \"input\" names, e.g. carry = { stateN = "
                               "\"state\" }", hint="each output named is fed back as that input on the next call")
        carry = tuple(sorted(pairs.items()))
    dataset_keys = {name for name, _ in dataset.inputs}
    for tensor in inputs:
        where = table.key(f"inputs.{tensor.name}")
        if tensor.value is not None and tensor.name in dataset_keys:
            raise PlanError(table.file, where + ".value", f"input {tensor.name!r} has a value and is also read from "
                            "the dataset (dataset.inputs)", hint="give the constant here or the array there, not both")
    for output, fed in carry:
        if fed in {t.name for t in inputs if t.value is not None}:
            raise PlanError(table.file, table.key("stream.carry"), f"{output!r} is fed back as {fed!r}, which is a "
                            "constant (inputs.{fed}.value)", hint="carry an output into a model input, not a constant")
    return Layout(inputs=inputs, outputs=outputs, score=score, carry=carry,
                  static=table.get("static", bool, False))


def _tensor(table: _Table, name: str, *, inputs: bool) -> Tensor:
    table.check_keys({"batch_axis", "value", "dtype"} if inputs else {"batch_axis"})
    axis = table.get("batch_axis", (int, str), 0)
    if isinstance(axis, str) and axis != "none":
        raise table.error("batch_axis", f"expected an axis (0, 1, ...) or 'none', got {axis!r}")
    if isinstance(axis, int) and axis < 0:
        raise table.error("batch_axis", f"must be 0 or more (or 'none'), got {axis}")
    dtype = table.get("dtype", str, None)
    if dtype is not None:
        import numpy as np

        try:
            kind = np.dtype(dtype).kind
        except TypeError:
            kind = ""
        if kind not in "biuf" or not kind:
            raise table.error("dtype", f"{dtype!r} is not a numeric numpy dtype",
                              hint="e.g. 'float32', 'float16', 'int64', 'int32', 'uint8', 'bool'")
    value = table.get("value", (int, float, bool, list), None)
    return Tensor(name, None if axis == "none" or value is not None else axis, _freeze(value), dtype)


def _existing_path(table: _Table, key: str, base: Path, *, folder: bool = False, file_hint: str = "") -> Path:
    """The path at ``key``, resolved against ``base``: a readable regular file, or (``folder``) a non-empty folder;
    a symbolic-link loop or a special file (FIFO, device, socket) is refused here, naming the key."""
    relative: str = table.get(key, str)
    try:
        return usable_path(base, relative, folder=folder, file_hint=file_hint)
    except PathProblem as exc:
        raise table.error(key, exc.message, hint=exc.hint) from None


def _model_path(table: _Table, base: Path, framework: str) -> Path:
    """A model's ``path``: a folder only for a framework that takes one (MLX, the LLM runtimes' folders); a third
    party's backend may."""
    known = FRAMEWORKS.get(framework)
    folders = [f.name for f in FRAMEWORKS.values() if f.folder]
    path = _existing_path(table, "path", base, folder=known.folder if known else True,
                          file_hint="name the model file itself (the .onnx, the IR's .xml or the .gguf); a folder "
                          f"is a model only for framework {', '.join(folders[:-1])} or {folders[-1]}")
    refused = dict(known.foreign if known else ()).get(path.suffix.lower()) if path.is_file() else None
    if refused:
        raise table.error("path", f"{path.name}: framework {framework!r} cannot read a {path.suffix} file",
                          hint=refused)
    return path


def _model_ref(table: _Table, base: Path, threads: int, layout: Layout, *, candidate: bool) -> ModelRef:
    """One model; ``threads`` is the plan's ``measure.threads``, the default for a model that sets none; ``layout``
    its model's tensors (``static`` may be set per model)."""
    allowed = {"name", "path", "framework", "device", "platform", "providers", "threads", "options", "sha256",
               "allowed_op_domains", "static"}
    table.check_keys(allowed | ({"policy", "recipe", "missing_device", "fallback", "device_fallback"}
                                if candidate else set()))
    missing_device = table.get("missing_device", str, "skip")
    if missing_device not in ("skip", "fail"):
        raise table.error("missing_device", f"must be 'skip' or 'fail', got {missing_device!r}",
                          hint="'fail' when the device is required on every host that runs this plan")
    recipe = _recipe(table, base) if candidate and "recipe" in table.data else None
    if recipe is not None and "path" in table.data:
        raise table.error("recipe", "give either 'path' (a model file) or 'recipe' (how to make it), not both")
    framework = _framework(table)
    device = table.get("device", str, "cpu")
    platforms = _str_list(table, "platform")
    for p in platforms:
        if p not in PLATFORMS:
            raise table.error("platform", f"unknown platform {p!r}{did_you_mean(p, PLATFORMS)}",
                              hint=f"known platforms: {', '.join(PLATFORMS)}")
    ref = ModelRef(
        name=table.get("name", str) if candidate else table.get("name", str, "baseline"),
        path=None if recipe else _model_path(table, base, framework),
        framework=framework,
        device=device,
        platforms=platforms,
        providers=_str_list(table, "providers"),
        threads=table.get("threads", int, threads),
        options=_freeze(table.get("options", dict, {})),
        policy_overrides=tuple(sorted(_overrides(table, table.get("policy", dict, {})).items()))
        if candidate else (),
        recipe=recipe,
        missing_device=missing_device,
        sha256=_sha256(table),
        fallback=table.get("fallback", str, None),
        device_fallback=table.get("device_fallback", bool, True),
        allowed_op_domains=_str_list(table, "allowed_op_domains"),
        layout=replace(layout, static=table.get("static", bool, layout.static)),
    )
    if ref.device_class not in DEVICES:
        raise table.error("device", f"unknown device {device!r}{did_you_mean(device, DEVICES)}",
                          hint="use cpu, gpu or npu (or AUTO:<list> / HETERO:<list> for OpenVINO)")
    return ref


def _sha256(table: _Table) -> str | None:
    """A pinned digest, ``sha256:<64 hex>`` or the bare hex (as ``sha256sum`` prints it)."""
    value = table.get("sha256", str, None)
    if value is None:
        return None
    digest: str = value.lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise table.error("sha256", f"expected 64 hex digits (optionally prefixed 'sha256:'), got {value!r}",
                          hint="pin what `certify digest MODEL` (or sha256sum, for a single-file model) prints")
    return digest


def _recipe(table: _Table, base: Path) -> Recipe:
    spec = _Table(table.get("recipe", dict), table.file, table.key("recipe"))
    tool, method = spec.get("tool", str), spec.get("method", str)
    params = {k: v for k, v in spec.data.items() if k not in ("tool", "method", "from")}
    for key, message in check_params(tool, method, params):
        raise spec.error(key, message)
    if (tool, method) == ("olive", "workflow"):  # the user's workflow file, relative to the plan like any path
        params["config"] = str(_existing_path(spec, "config", base))
    return Recipe(tool, method, spec.get("from", str, "baseline"), _freeze(params))


def _check_recipe_sources(table: _Table, candidates: tuple[ModelRef, ...]) -> None:
    """Every ``from`` names the baseline or another candidate, and no recipe depends on itself."""
    by_name = {c.name: c for c in candidates}
    for i, cand in enumerate(candidates):
        seen, current = {cand.name}, cand
        while current.recipe is not None and current.recipe.source != "baseline":
            source = current.recipe.source
            if source not in by_name:
                raise table.error(f"candidates[{i}].recipe.from", f"unknown source {source!r}"
                                  f"{did_you_mean(source, by_name)}", hint="'baseline' or another candidate's name")
            if source in seen:
                raise table.error(f"candidates[{i}].recipe.from", f"recipes form a cycle through {source!r}")
            seen.add(source)
            current = by_name[source]


def _framework(table: _Table) -> str:
    from certify.backends import registered_names

    name: str = table.get("framework", str)
    if ":" not in name and name not in FRAMEWORKS and name not in registered_names():
        known = sorted(set(FRAMEWORKS) | set(registered_names()))
        raise table.error("framework", f"unknown framework {name!r}{did_you_mean(name, known)}",
                          hint=f"known frameworks: {', '.join(known)}; or a 'module:Class' backend")
    return name


def _str_list(table: _Table, key: str) -> tuple[str, ...]:
    value = table.get(key, (str, list), [])
    items = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in items):
        raise table.error(key, f"expected a list of strings, got {value!r}")
    return tuple(items)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _dataset(table: _Table, base: Path) -> Dataset:
    table.check_keys({"path", "loader", "inputs", "labels", "batch_size", "speed_batch_size", "limit", "text",
                      "context", "chunks", "speed"})
    if sum(k in table.data for k in ("path", "loader", "text")) != 1:
        raise table.error("path", "give exactly one of 'path' (a .npz file), 'loader' ('module:function') or "
                          "'text' (a text file, for language models)")
    if "text" in table.data:
        return _text_dataset(table, base)
    path = _existing_path(table, "path", base, file_hint="name the .npz file itself") \
        if "path" in table.data else None
    loader = table.get("loader", str, None)
    if loader is not None and ":" not in loader:
        raise table.error("loader", f"expected 'module:function', got {loader!r}")
    inputs_raw = table.get("inputs", (str, dict), "x")
    inputs = (("", inputs_raw),) if isinstance(inputs_raw, str) else tuple(sorted(inputs_raw.items()))
    dataset = Dataset(
        path=path, loader=loader, inputs=inputs, labels=table.get("labels", str, "y"),
        batch_size=_positive(table, "batch_size", 64), speed_batch_size=_positive(table, "speed_batch_size", 1),
        limit=table.get("limit", int, 0),
    )
    if path is not None:
        dataset = _check_npz_keys(table, path, dataset)
    return dataset


def _text_dataset(table: _Table, base: Path) -> Dataset:
    speed = table.get("speed", str, "generation")
    if speed not in ("generation", "prompt"):
        raise table.error("speed", f"must be 'generation' or 'prompt', got {speed!r}")
    return Dataset(path=None, loader=None, inputs=(("", "tokens"),), labels="next_tokens",
                   batch_size=_positive(table, "batch_size", 1), text=_existing_path(table, "text", base),
                   context=_positive(table, "context", 128), chunks=_positive(table, "chunks", 8), speed=speed)


def _positive(table: _Table, key: str, default: int) -> int:
    value: int = table.get(key, int, default)
    if value <= 0:
        raise table.error(key, f"must be a positive integer, got {value}")
    return value


def _check_npz_keys(table: _Table, path: Path, dataset: Dataset) -> Dataset:
    """Every named key must be in the file; labels default to 'y' only where the file has it."""
    import numpy as np

    try:
        with np.load(path) as npz:
            keys = set(npz.files)
    except (OSError, ValueError) as exc:
        raise table.error("path", f"cannot read {path} as .npz: {exc}") from None
    for _, key in dataset.inputs:
        if key not in keys:
            raise table.error("inputs", f"key {key!r} not in {path.name}{did_you_mean(key, keys)}",
                              hint=f"keys in the file: {', '.join(sorted(keys))}")
    if dataset.labels is not None and dataset.labels not in keys:
        if "labels" not in table.data:
            return replace(dataset, labels=None)
        raise table.error("labels", f"key {dataset.labels!r} not in {path.name}{did_you_mean(dataset.labels, keys)}",
                          hint=f"keys in the file: {', '.join(sorted(keys))}")
    return dataset
