"""What a gate receives: one narrow object with the case, its plan and policy, the evidence store, the dataset,
hints, the record being filled, and the session's shared measurements (the model's dataset, loaded once; whether
a model can run here). A gate never sees the runner."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from certify import verdict
from certify.errors import CertifyError
from certify.measure import dataset
from certify.measure.client import WorkerClient, open_worker
from certify.verdict import GateResult

if TYPE_CHECKING:
    from certify.cases import Case
    from certify.evidence import EvidenceStore
    from certify.plan import ModelPlan, ModelRef, Plan
    from certify.policy import Policy


class SharedMeasurements(Protocol):
    """What the session measures once and every case of a model reuses (``certify.runner.CertificationRun``)."""

    def data(self, model: ModelPlan) -> tuple[dict[str, np.ndarray], np.ndarray | None]: ...

    def tokenization(self, model: ModelPlan) -> dict[str, Any] | None: ...

    def cannot_run(self, ref: ModelRef, board: str = "") -> str: ...


@dataclass
class GateContext:
    """One case's gate being evaluated. ``measurement`` is the evidence record's measurement part: a gate puts
    there what a skeptic needs to check its verdict."""

    case: Case
    plan: Plan
    policy: Policy
    store: EvidenceStore
    hint: str  # the candidate's framework's advice for this gate ('' when it has none)
    shared: SharedMeasurements
    measurement: dict[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, float] = field(default_factory=dict)  # the gate's own thresholds (GateSpec.defaults)

    @property
    def gate(self) -> str:
        return self.case.gate

    def data(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The model's dataset: inputs by name, and labels (None without)."""
        return self.shared.data(self.case.model)

    def tokenization(self) -> dict[str, Any] | None:
        """A language model's text as the baseline tokenized it (BOS/EOS policy, where it was read, windows,
        scored tokens); None for a model without text."""
        return self.shared.tokenization(self.case.model)

    def speed_feeds(self) -> dict[str, np.ndarray]:
        """The one input every speed and memory measurement of this model uses (``dataset.speed_batch_size``)."""
        return dataset.speed_batch(self.data()[0], self.case.model.dataset.speed_batch_size, self.case.model.layout)

    def cannot_run(self, ref: ModelRef) -> str:
        """'' when ``ref``'s framework and device are present where the case measures (here, or its board), else
        what is missing and how to install it."""
        return self.shared.cannot_run(ref, self.case.board)

    def threshold(self, name: str) -> float:
        """A threshold by name: the policy's field (``min_speedup``...), else the gate's own default
        (``GateSpec.defaults``)."""
        value = getattr(self.policy, name, self.defaults.get(name))
        if not isinstance(value, (int, float)):
            raise CertifyError(f"the {self.gate} gate reads threshold {name!r}, which policy {self.policy.name!r} "
                               "does not have", hint=f"declare it in the gate's GateSpec(defaults={{{name!r}: ...}})")
        return float(value)

    @contextmanager
    def worker(self, role: str = "candidate") -> Iterator[WorkerClient]:
        """A fresh measurement worker with the candidate (or ``role = "baseline"``) loaded, closed afterwards.
        ``worker.call("feeds", key=..., arrays=...)`` then ``worker.call("run", key=..., iterations=...)`` times
        inferences; ``worker.call("predict", key=..., batch_size=...)`` answers a whole dataset."""
        ref = self.case.candidate if role == "candidate" else self.case.model.baseline
        with open_worker(role, ref, self.plan.measure.timeout_s) as client:
            client.call("load", ref=ref)
            yield client

    def decide(self, label: str, value: float, threshold: float, *, interval: tuple[float, float] | None = None,
               unit: str = "", higher_is_better: bool = True, details: dict[str, Any] | None = None) -> GateResult:
        """This gate's verdict on an estimate under the policy's decision rule (``certify.verdict.decide``),
        with the framework's hint when it fails."""
        return verdict.decide(self.gate, label, value, interval, threshold, policy=self.policy, unit=unit,
                              higher_is_better=higher_is_better, hint=self.hint, details=details)
