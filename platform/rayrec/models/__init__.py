"""Models: the Embedding+MLP ranker and the two-tower retriever, each built from one config and the
FeatureSpec's table sizes; ``rayrec.models.inference`` is what serving calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from rayrec.features.spec import FeatureSpec
from rayrec.models.ranker import Ranker, RankerConfig
from rayrec.models.two_tower import TwoTower, TwoTowerConfig

__all__ = ["MODELS", "Ranker", "RankerConfig", "TwoTower", "TwoTowerConfig", "build_model", "model_config"]

# registry name → (model class, config class)
MODELS: dict[str, tuple[type[nn.Module], Any]] = {
    "ranker": (Ranker, RankerConfig),
    "retriever": (TwoTower, TwoTowerConfig),
}


def model_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The config of model ``name`` ("ranker" | "retriever") with ``overrides`` applied."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[name][1]
    return cls.from_dict({**cls().to_dict(), **overrides}) if overrides else cls()


def build_model(name: str, config: Any, sizes: Mapping[str, int] | FeatureSpec) -> nn.Module:
    """A fresh model ``name`` from its config and the FeatureSpec (or its ``sizes``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    model_cls, config_cls = MODELS[name]
    if isinstance(config, Mapping):
        config = config_cls.from_dict(config)
    table_sizes = sizes.sizes if isinstance(sizes, FeatureSpec) else sizes
    return model_cls(config, table_sizes)
