"""The gate registry: every gate the harness knows, built in or added by a user, declared once.

A gate is a ``GateSpec``: its name (also its pytest marker), a one-line summary, how it is evaluated
(``evaluate(ctx: GateContext) -> GateResult``, or a ``"module:function"`` string imported when first used), whether
it times things or loads the cores (``exclusive``: measured alone on the host), whether it reads the model's files
only (``static``: any host can judge it), whether a project's own gate is required for certification
(``required``; the built-in ones a candidate must pass are the policy's ``required_gates``, all eight by default)
and the thresholds it reads. Markers, the report's column order and the runner's locking all derive from here.
Adding a built-in gate is one module in ``certify/gates/`` and one line in
``BUILTIN``; a user adds one from a ``conftest.py`` (the ``pytest_certify_gates`` hook) or a package (the
``certify.gates`` entry-point group), see ``certify.hookspecs``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from certify.errors import CertifyError

if TYPE_CHECKING:
    from certify.gates.context import GateContext
    from certify.verdict import GateResult

ENTRY_POINT_GROUP = "certify.gates"
Evaluate = Callable[["GateContext"], "GateResult"]


@dataclass(frozen=True)
class GateSpec:
    name: str
    summary: str
    evaluate: str | Evaluate | None  # "module:function" (imported when first run), the function, or None: a test
    # function of the project evaluates it (with the certify_* fixtures), so the plan file holds no item for it
    exclusive: bool = False  # times things or loads the cores: never measured beside other work on this host
    static: bool = False  # reads the model's files, never runs it: judged on any host, whatever the target
    required: bool = False  # a project's own gate: CERTIFIED needs it passed, like the policy's required_gates
    thresholds: tuple[str, ...] = ()  # the policy's fields it reads (``certify.policy.Policy``)
    defaults: Mapping[str, float] = field(default_factory=dict)  # a user gate's own thresholds, by name
    stage_figure: bool = False  # shown per recipe step in the report ("what this step bought")

    def evaluator(self) -> Evaluate:
        if self.evaluate is None:
            raise CertifyError(f"gate {self.name!r} has no evaluate function: a test function evaluates it",
                               hint=f"run the test marked @pytest.mark.{self.name} (it records its verdict with "
                               "certify_record)")
        if callable(self.evaluate):
            return self.evaluate
        module, _, function = self.evaluate.partition(":")
        found: Evaluate = getattr(importlib.import_module(module), function)
        return found


def _builtin(name: str, summary: str, **kwargs: Any) -> GateSpec:
    return GateSpec(name, summary, f"certify.gates.{kwargs.pop('module', name)}:evaluate", **kwargs)


BUILTIN: tuple[GateSpec, ...] = (
    _builtin("accuracy", "the candidate keeps the baseline's quality on the plan's metric",
             thresholds=("min_accuracy_retention",), stage_figure=True),
    _builtin("speed", "the candidate is faster than the baseline (paired, interleaved runs)", module="speed",
             exclusive=True, thresholds=("min_speedup",), stage_figure=True),
    _builtin("memory", "the candidate's working set is smaller than the baseline's", exclusive=True,
             thresholds=("min_memory_reduction",), stage_figure=True),
    GateSpec("stability", "the candidate's latency is steady (tail, spread, drift)",
             "certify.gates.speed:evaluate_stability", exclusive=True,
             thresholds=("max_p99_over_p50", "max_cv", "max_drift")),
    _builtin("stress", "sustained concurrent load: no errors, bounded tail, no decay or growth", exclusive=True,
             thresholds=("max_load_p99_ratio", "max_throughput_decay", "max_memory_growth_mib_per_min")),
    _builtin("fallback", "a missing device or a failed load falls back and serves correct outputs", exclusive=True,
             thresholds=("max_recovery_s",)),
    _builtin("robustness", "bad inputs get a clear error and the runtime keeps serving"),
    _builtin("security", "model files are as pinned, hold no escaping data or untrusted custom ops", static=True),
)


class GateRegistry:
    """The gates of one session, in order: the built-in ones, then the added ones in the order they came."""

    def __init__(self, specs: Iterable[GateSpec] = BUILTIN) -> None:
        self._specs: dict[str, GateSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: GateSpec, origin: str = "") -> None:
        if not isinstance(spec, GateSpec):
            raise CertifyError(f"{origin or 'a gate registration'} gave {spec!r}, not a certify.gates.GateSpec",
                               hint="return GateSpec(name=..., summary=..., evaluate=...) objects")
        if not spec.name.isidentifier():
            raise CertifyError(f"gate name {spec.name!r}{' from ' + origin if origin else ''} is not an identifier",
                               hint="use letters, digits and underscores: it becomes a pytest marker")
        known = self._specs.get(spec.name)
        if known is not None and known != spec:
            raise CertifyError(f"gate {spec.name!r}{' from ' + origin if origin else ''} is registered twice",
                               hint="give the new gate another name")
        self._specs[spec.name] = spec

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> GateSpec:
        return self._specs[name]

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def exclusive(self, name: str) -> bool:
        """Is gate ``name`` measured alone on the host? An unknown gate is, to be safe."""
        return self._specs[name].exclusive if name in self._specs else True

    def where(self, flag: str) -> tuple[str, ...]:
        """The names of the gates whose ``flag`` (exclusive, static, required, stage_figure) is set."""
        return tuple(s.name for s in self._specs.values() if getattr(s, flag))

    def required(self, policy_gates: Iterable[str]) -> tuple[str, ...]:
        """The gates a candidate must pass to be CERTIFIED: its policy's ``required_gates``, then every added gate
        whose spec says ``required``."""
        return tuple(dict.fromkeys([*policy_gates, *self.where("required")]))

    def order(self, gates: Iterable[str]) -> list[str]:
        """The given gate names in registry order, unknown ones after them by name (a report of another run)."""
        present = set(gates)
        return [g for g in self._specs if g in present] + sorted(present - set(self._specs))


def entry_point_specs() -> list[tuple[GateSpec, str]]:
    """Gates that installed packages declare in the ``certify.gates`` entry-point group (each entry point loads
    to a GateSpec or a list of them)."""
    found: list[tuple[GateSpec, str]] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name} = {ep.value}"
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken third-party gate must not end the session without saying which
            raise CertifyError(f"{origin} failed to import: {type(exc).__name__}: {exc}",
                               hint="fix or uninstall the package that declares it") from None
        found += [(spec, origin) for spec in (loaded if isinstance(loaded, (list, tuple)) else [loaded])]
    return found


BUILTIN_REGISTRY = GateRegistry()
GATE_NAMES = BUILTIN_REGISTRY.names  # the built-in gates, in the harness's order
