"""The plan's frozen types: models, baseline and candidates, dataset, measurement and stress settings.

They import nothing above them (the TOML loader that builds them is ``certify.plan.load``), so every layer of the
harness can use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certify.errors import CertifyError
from certify.policy import Policy

if TYPE_CHECKING:
    from certify.recipes import Recipe

DEVICE_PREFIXES = ("AUTO", "HETERO", "MULTI")
NOISE_OPTIONS = ("wait", "refuse", "warn", "ignore")  # measure.noise: see certify.measure.preflight


@dataclass(frozen=True)
class Measure:
    """How long and how hard to measure. Speed runs adapt between the min and max bounds."""

    warmup_iterations: int = 10
    min_iterations: int = 30
    max_iterations: int = 5000
    min_duration_s: float = 1.0
    max_duration_s: float = 15.0
    timeout_s: float = 300.0
    memory_repeats: int = 3
    bootstrap_resamples: int = 2000
    replicates: int = 3  # speed runs: fresh worker pairs, one after the other (between-process variance)
    seed: int = 0
    threads: int = 0
    memory_limit_mib: int = 0  # each worker's data-segment limit (RLIMIT_DATA); 0 = none
    noise_wait_s: float = 120.0  # under noise = "wait": how long to wait for a too-noisy host to quieten
    noise: str = "wait"  # a too-noisy host (speed preflight): wait for quiet (then ERROR if it never came), refuse
    # (ERROR, nothing measured), warn (measure widened, the verdict stands with a warning), or ignore


@dataclass(frozen=True)
class Stress:
    """The ``[stress]`` table: sustained load on one loaded model. ``clients`` concurrent closed-loop clients
    for ``duration_s`` (``--certify-soak SECONDS`` raises it for long runs); with ``rate`` > 0 an open-loop phase
    follows at that many requests per second with random (Poisson) arrivals, like MLPerf's Server scenario.
    Throughput is compared across ``windows`` equal slices of the run; every ``sample_every``-th request's
    outputs are compared with the same input's outputs in isolation."""

    duration_s: float = 6.0
    clients: int = 2
    rate: float = 0.0
    windows: int = 3
    sample_every: int = 5


@dataclass(frozen=True)
class Tensor:
    """One model input or output as the plan describes it (``[models.inputs.NAME]``, ``[models.outputs.NAME]``).

    ``batch_axis`` is the axis that holds the samples (None: the tensor is not batched, e.g. a scalar). An input
    with a ``value`` is that constant on every call (never batched, never read from the dataset); ``dtype`` casts
    the dataset's array (or the value) to that numpy dtype before any check."""

    name: str
    batch_axis: int | None = 0
    value: Any = None
    dtype: str | None = None


@dataclass(frozen=True)
class Layout:
    """How a model's tensors hold their samples, shared by a model's baseline and candidates.

    ``inputs``/``outputs`` list only the tensors the plan describes (the others: batch on axis 0). ``score`` names
    the outputs the metric scores (empty: the first output). ``carry`` makes a streaming model: each call's output
    (key) is fed back as the next call's input (value), and the dataset's streamed inputs carry one more axis, the
    chunks, right after their batch axis. ``static``: compile for the served (speed) shape."""

    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    score: tuple[str, ...] = ()
    carry: tuple[tuple[str, str], ...] = ()
    static: bool = False

    def input(self, name: str) -> Tensor:
        return next((t for t in self.inputs if t.name == name), Tensor(name))

    def output(self, name: str) -> Tensor:
        return next((t for t in self.outputs if t.name == name), Tensor(name))

    def constants(self) -> dict[str, Tensor]:
        return {t.name: t for t in self.inputs if t.value is not None}

    @property
    def carried_inputs(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.carry)


@dataclass(frozen=True)
class ModelRef:
    """One model file to run: a baseline or a candidate."""

    name: str
    path: Path | None  # None for a candidate made by a recipe until it is built
    framework: str
    device: str = "cpu"
    platforms: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    threads: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    policy_overrides: tuple[tuple[str, Any], ...] = ()
    recipe: Recipe | None = None
    missing_device: str = "skip"  # a candidate whose device is missing here: NOT EVALUATED (skip) or FAIL
    sha256: str | None = None  # the digest the plan pins for the model (certify.digests.model_digest)
    fallback: str | None = None  # the model that serves when this one fails to load: 'baseline' or a candidate
    device_fallback: bool = True  # may the runtime fall back to another device than the one asked for?
    allowed_op_domains: tuple[str, ...] = ()  # custom-operator domains the plan trusts (security gate)
    layout: Layout = field(default_factory=Layout)  # the model's tensors (the same for baseline and candidates)

    @property
    def file(self) -> Path:
        """The model file; a recipe's candidate has one only once built (``certify.recipes.build``)."""
        if self.path is None:
            raise CertifyError(f"candidate {self.name!r} is made by a recipe that has not been built",
                               hint="the runner builds recipes before measuring; see certify.recipes.build")
        return self.path

    @property
    def device_class(self) -> str:
        """'cpu', 'gpu' or 'npu': the first device named (``AUTO:GPU,CPU`` -> gpu, ``GPU.0`` -> gpu); a bare
        ``AUTO``/``HETERO``/``MULTI`` is cpu, the one device they always have."""
        head = self.device.split(":", 1)[-1] if ":" in self.device else self.device
        named = [d.strip() for d in head.split(",") if d.strip() and not d.strip().startswith("-")]
        first = named[0].split(".")[0].lower() if named else "auto"
        return "cpu" if first in ("auto", "hetero", "multi") else first

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Dataset:
    """Evaluation data: a ``.npz`` (inputs and labels by key), a ``module:function`` loader, or for language
    models a ``text`` file, tokenized by the baseline and cut into ``chunks`` windows of ``context`` tokens."""

    path: Path | None
    loader: str | None
    inputs: tuple[tuple[str, str], ...]
    labels: str | None
    batch_size: int = 64
    speed_batch_size: int = 1
    limit: int = 0
    text: Path | None = None
    context: int = 128
    chunks: int = 8
    speed: str = "generation"  # language models: time token generation, or prompt processing ("prompt")


@dataclass(frozen=True)
class ModelPlan:
    name: str
    metric: str  # a built-in or task metric's name, or a user's 'module:function'
    dataset: Dataset
    baseline: ModelRef
    candidates: tuple[ModelRef, ...]
    metric_params: tuple[tuple[str, Any], ...] = ()  # metric = { name = ..., threshold = ... }: the rest

    @property
    def layout(self) -> Layout:
        return self.baseline.layout


@dataclass(frozen=True)
class Plan:
    source: Path
    name: str
    policy: Policy
    measure: Measure
    models: tuple[ModelPlan, ...]
    digest: str = field(default="")
    stress: Stress = field(default_factory=Stress)

    def policy_for(self, candidate: ModelRef) -> Policy:
        return self.policy.with_overrides(dict(candidate.policy_overrides))
