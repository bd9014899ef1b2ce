"""The models serving loads: the ranker and the two-tower's user tower of the registry, as the one
inference class of each (:mod:`rayrec.models.inference`), with a note when one cannot be loaded.
The store rows a request reads become encoder columns through :func:`rayrec.models.inputs.user_columns`
and ``item_columns``.
"""

from __future__ import annotations

import logging
from typing import Any

from rayrec.features.spec import FeatureSpec, load_spec
from rayrec.models.inference import RankerScorer, TowerEncoder, load_model
from rayrec.models.inputs import item_columns, user_columns

__all__ = ["item_columns", "user_columns", "RankerScorer", "TowerEncoder", "load_models"]

log = logging.getLogger(__name__)


def load_models(
    artifacts: str, ranker_version: str | None, retriever_version: str | None
) -> tuple[RankerScorer | None, TowerEncoder | None, list[str]]:
    """The ranker and the user tower of the registry, each None (with a note why) when it cannot be
    loaded: serving then ranks by recall order, or queries the index with the mean of recent likes."""
    notes: list[str] = []
    ranker: RankerScorer | None = None
    tower: TowerEncoder | None = None
    for name, version in (("ranker", ranker_version), ("retriever", retriever_version)):
        if version is None:
            continue
        try:
            loaded = load_model(artifacts, name, version)
            spec = _spec_of(artifacts, loaded)
            loaded.check_spec(spec)  # the encoders must be the ones the model was trained with
            if name == "ranker":
                ranker = RankerScorer(loaded, spec)  # (with the version's EASE weights when it takes them)
            else:
                tower = TowerEncoder(loaded.model, spec, str(loaded.version))
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            notes.append(f"{name} not loaded: {e}")
            log.warning("%s not loaded: %s", name, e)
            continue
    return ranker, tower, notes


def _spec_of(artifacts: str, loaded: Any) -> FeatureSpec:
    """The FeatureSpec the model was trained with: the one of its features version."""
    meta = getattr(loaded, "meta", {}) or {}
    version = meta.get("features_version") or "latest"
    return load_spec(artifacts, version)
