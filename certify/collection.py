"""A plan file collected as a pytest file: ``certify.toml`` (or a ``pyproject.toml`` with ``[tool.certify]``) in the
rootdir or given on the command line holds one node per candidate and one item per gate under it::

    certify.toml::digits-mlp/int8-dynamic::speed

Each item carries the markers of its candidate's target (platform, device class, framework) and its gate, so
``pytest -m intel``, ``pytest -m "speed and cpu"``, ``pytest certify.toml -k int8`` and ``pytest -n 2`` select and
spread cases as for any test. Running an item is ``certify.session.judge``, as for the packaged suites."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certify.cases import Case
from certify.session import STATE, case_marks, case_property, judge


class PlanFile(pytest.File):
    """The session's plan: one ``CandidateNode`` per (model, candidate), and per board in a lab, in plan order."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        state = self.config.stash[STATE]
        for model in state.plan().models:
            for candidate in model.candidates:
                for board, platforms in state.placements(candidate):
                    pair = Case(model, candidate, "", board, platforms)
                    yield CandidateNode.from_parent(self, name=pair.id, pair=pair)


class CandidateNode(pytest.Collector):
    """One candidate of one model (on one board, in a lab): its gates are its items; its target's markers apply to
    all of them."""

    def __init__(self, *, pair: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pair = pair
        for mark in case_marks(pair):
            self.add_marker(mark)

    def collect(self) -> Iterator[pytest.Item]:
        for spec in self.config.stash[STATE].gates:
            if spec.evaluate is None:  # evaluated by the project's own test function, not from the plan file
                continue
            yield CaseItem.from_parent(self, name=spec.name, case=replace(self.pair, gate=spec.name))


class CaseItem(pytest.Item):
    """One (model, candidate, gate) case. It uses no fixtures; ``fixturenames`` says so for plugins that read it
    from every item as if each were a test function (labgrid's pytest plugin checks it for ``strategy``)."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fixturenames: list[str] = []
        self.certify_case = case
        self.add_marker(case.gate)
        self.user_properties.append(case_property(case))

    def runtest(self) -> None:
        judge(self, self.certify_case)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.certify_case.id} {self.certify_case.gate}"


def is_plan_file(file_path: Path, plan_path: Path | None) -> bool:
    """True for the session's plan file (the one every case comes from)."""
    return plan_path is not None and file_path.resolve() == plan_path.resolve()
