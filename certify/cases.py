"""Certification cases: one per (model, candidate, gate), each carrying its target's markers; in a lab of boards, one
per (model, candidate, gate, board) the candidate is routed to (``certify.lab.fleet.Lab.route``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from certify.frameworks import FRAMEWORKS
from certify.plan import ModelPlan, ModelRef, Plan
from certify.records import CaseFields, case_id


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@dataclass(frozen=True)
class Case:
    model: ModelPlan
    candidate: ModelRef
    gate: str
    board: str = ""  # the lab's board that measures it ('' here, on the machine running pytest)
    board_platforms: tuple[str, ...] = ()  # that board's detected platform markers

    @property
    def id(self) -> str:
        """``model/candidate``, and ``@board`` when a board of the lab measures it."""
        return case_id(self.model.name, self.candidate.name, self.board or None)

    @property
    def key(self) -> str:
        """A file-name-safe identity of the pair (and its board), for caches."""
        return safe_name(f"{self.model.name}--{self.candidate.name}" + (f"@{self.board}" if self.board else ""))

    @property
    def baseline_key(self) -> str:
        """A file-name-safe identity of the baseline where this case measures it (its model, and its board): the
        baseline's figures are shared by the cases of one model measured on one machine, never across machines."""
        return safe_name(self.model.name + (f"@{self.board}" if self.board else ""))

    def markers(self) -> list[str]:
        """Target platform(s), device class and framework: what ``-m`` selects on; on a board, also the board's
        platforms (``-m intel`` selects what an Intel board measures)."""
        marks = [*self.candidate.platforms, self.candidate.device_class]
        marks += [p for p in self.board_platforms if p not in marks]
        if self.candidate.framework in FRAMEWORKS:
            marks.append(self.candidate.framework)
        return marks

    def describe(self) -> CaseFields:
        return {"case": self.id, "model": self.model.name, "candidate": self.candidate.name, "gate": self.gate,
                "framework": self.candidate.framework, "device": self.candidate.device,
                "platforms": list(self.candidate.platforms), "markers": self.markers(), "board": self.board or None,
                "recipe": self.candidate.recipe.describe() if self.candidate.recipe else None}


Placements = Callable[[ModelRef], list[tuple[str, tuple[str, ...]]]]  # candidate -> [(board, its platforms)]


def here(_candidate: ModelRef) -> list[tuple[str, tuple[str, ...]]]:
    """Every case is measured on the machine running pytest (no lab)."""
    return [("", ())]


def cases_for(plan: Plan, gate: str, placements: Placements = here) -> list[Case]:
    """The gate's cases: one per candidate, and per board it is routed to (``SessionState.placements``)."""
    return [Case(model, candidate, gate, board, platforms) for model in plan.models for candidate in model.candidates
            for board, platforms in placements(candidate)]
