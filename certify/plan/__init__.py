"""The certification plan: what to certify (models, baseline, candidates, dataset, metric, target hardware) and
under which policy. ``certify.plan.types`` holds the frozen types (re-exported here); ``certify.plan.load`` reads
and validates TOML into them."""

from certify.plan.types import Dataset, Layout, Measure, ModelPlan, ModelRef, Plan, Stress, Tensor

__all__ = ["Dataset", "Layout", "Measure", "ModelPlan", "ModelRef", "Plan", "Stress", "Tensor"]
