"""Typed settings from the blocks tests write, resolved as audiopetl.study resolves a
validated configuration's blocks (the same classmethods)."""

from __future__ import annotations

from typing import Any

from audiopetl.core.settings import FeatureSettings, ModelSettings, StrategySettings


def model_settings(block: dict[str, Any], name: str = "test-model") -> ModelSettings:
    return ModelSettings.of(name, block)


def feature_settings(values: dict[str, Any], dataset: str = "test") -> FeatureSettings:
    return FeatureSettings.of(dataset, values, "test")


def strategy_settings(block: dict[str, Any], name: str = "test") -> StrategySettings:
    """A strategy block; tests that do not care about the learning rate leave it out."""
    return StrategySettings.of(name, {"lr": 1.0, **block})
