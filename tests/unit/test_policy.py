"""certify.policy: frozen named policies, their digests and overrides."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from certify.policy import DECISION_RULES, POLICIES, THRESHOLD_TYPES, Policy

DEFAULT, STRICT = POLICIES["edge-default"], POLICIES["edge-strict"]


def _changed(field: str, value: Any) -> Any:
    if field == "decision":
        return next(rule for rule in DECISION_RULES if rule != value)
    if field == "required_gates":
        return value[:-1]
    assert isinstance(value, float)
    return round(value * 0.9, 6)


def test_digest_is_a_stable_sha256() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", DEFAULT.digest())
    assert DEFAULT.digest() == DEFAULT.digest() == Policy(name="edge-default").digest()
    assert dataclasses.replace(DEFAULT).digest() == DEFAULT.digest()


@pytest.mark.parametrize("field", list(DEFAULT.thresholds()))
def test_digest_changes_when_any_threshold_changes(field: str) -> None:
    changed = dataclasses.replace(DEFAULT, **{field: _changed(field, getattr(DEFAULT, field))})
    assert changed.digest() != DEFAULT.digest()
    assert changed.with_overrides({field: getattr(DEFAULT, field)}).thresholds() == DEFAULT.thresholds()


def test_digest_covers_the_name() -> None:
    assert dataclasses.replace(DEFAULT, name="other").digest() != DEFAULT.digest()
    assert STRICT.digest() != DEFAULT.digest()


def test_with_overrides_renames_and_leaves_the_base_unchanged() -> None:
    before = DEFAULT.to_dict()
    derived = DEFAULT.with_overrides({"min_speedup": 3.0, "decision": "point"})
    assert derived.name == "edge-default+overrides"
    assert (derived.min_speedup, derived.decision) == (3.0, "point")
    assert derived.min_accuracy_retention == DEFAULT.min_accuracy_retention
    assert derived.digest() != DEFAULT.digest()
    assert DEFAULT.to_dict() == before and POLICIES["edge-default"] is DEFAULT
    assert DEFAULT.min_speedup == 2.0 and DEFAULT.name == "edge-default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.min_speedup = 3.0  # type: ignore[misc]


def test_with_overrides_twice_keeps_a_single_suffix() -> None:
    twice = DEFAULT.with_overrides({"min_speedup": 3.0}).with_overrides({"max_cv": 0.2})
    assert twice.name == "edge-default+overrides"
    assert (twice.min_speedup, twice.max_cv) == (3.0, 0.2)


def test_with_no_overrides_is_the_same_policy() -> None:
    assert DEFAULT.with_overrides({}) is DEFAULT


def test_with_overrides_rejects_unknown_keys() -> None:
    with pytest.raises(TypeError):
        DEFAULT.with_overrides({"min_speed": 3.0})


def test_to_dict_and_threshold_types() -> None:
    data = DEFAULT.to_dict()
    assert data["name"] == "edge-default" and data["digest"] == DEFAULT.digest()
    assert data["thresholds"]["min_speedup"] == 2.0 and "name" not in data["thresholds"]
    assert set(THRESHOLD_TYPES) == set(DEFAULT.thresholds())
    assert all(isinstance(getattr(DEFAULT, k), t) for k, t in THRESHOLD_TYPES.items())


def test_edge_strict_is_at_least_as_strict_as_edge_default() -> None:
    default, strict = DEFAULT.thresholds(), STRICT.thresholds()
    stricter = 0
    for key, value in default.items():
        if key.startswith("min_") or key == "confidence":  # higher is stricter (wider interval under lower_bound)
            assert strict[key] >= value, key
            stricter += strict[key] > value
        elif key.startswith("max_"):
            assert strict[key] <= value, key
            stricter += strict[key] < value
        elif key == "decision":
            assert value != "lower_bound" or strict[key] == "lower_bound"
        elif key == "required_gates":
            assert set(strict[key]) >= set(value)
        else:
            raise AssertionError(f"threshold {key} has no strictness rule")
    assert stricter >= 1


def test_weaker_points_compare_every_threshold_in_its_direction() -> None:
    from certify.policy import weaker_points

    assert weaker_points(STRICT.thresholds(), DEFAULT) == []
    assert weaker_points(DEFAULT.thresholds(), DEFAULT) == []
    fewer = dataclasses.replace(DEFAULT, required_gates=("accuracy", "speed")).thresholds()
    assert weaker_points(fewer, DEFAULT) == ["required_gates leaves out fallback, memory, robustness, security, "
                                             "stability, stress (required: accuracy, speed, memory, stability, "
                                             "stress, fallback, robustness, security)"]
    found = weaker_points(DEFAULT.thresholds(), STRICT)
    assert {f.split()[0] for f in found} == {"min_accuracy_retention", "max_p99_over_p50", "max_cv", "max_drift",
                                             "max_load_p99_ratio", "max_throughput_decay",
                                             "max_memory_growth_mib_per_min", "max_recovery_s"}
    point = DEFAULT.with_overrides({"decision": "point"})
    assert any(f.startswith("decision 'point'") for f in weaker_points(point.thresholds(), DEFAULT))
    assert weaker_points(DEFAULT.thresholds(), point) == []  # lower_bound is stricter than point
    missing = {k: v for k, v in DEFAULT.thresholds().items() if k != "min_speedup"}
    assert weaker_points(missing, DEFAULT) == ["min_speedup not recorded (required 2.0)"]
