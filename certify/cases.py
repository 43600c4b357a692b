"""Certification cases: one per (model, candidate, gate), each carrying its target's markers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from certify.frameworks import FRAMEWORKS
from certify.plan import ModelPlan, ModelRef, Plan
from certify.records import CaseFields


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@dataclass(frozen=True)
class Case:
    model: ModelPlan
    candidate: ModelRef
    gate: str

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.candidate.name}"

    @property
    def key(self) -> str:
        """A file-name-safe identity of the pair, for caches."""
        return safe_name(f"{self.model.name}--{self.candidate.name}")

    def markers(self) -> list[str]:
        """Target platform(s), device class and framework: what ``-m`` selects on."""
        marks = [*self.candidate.platforms, self.candidate.device_class]
        if self.candidate.framework in FRAMEWORKS:
            marks.append(self.candidate.framework)
        return marks

    def describe(self) -> CaseFields:
        return {"case": self.id, "model": self.model.name, "candidate": self.candidate.name, "gate": self.gate,
                "framework": self.candidate.framework, "device": self.candidate.device,
                "platforms": list(self.candidate.platforms), "markers": self.markers(),
                "recipe": self.candidate.recipe.describe() if self.candidate.recipe else None}


def cases_for(plan: Plan, gate: str) -> list[Case]:
    return [Case(model, candidate, gate) for model in plan.models for candidate in model.candidates]
