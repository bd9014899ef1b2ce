"""Rerank settings: the knobs an operator turns while the service runs.

They arrive through the Serve deployment's ``user_config`` (key ``rerank``) and are applied by
``reconfigure`` without restarting a replica, so every field has a default that serves well on its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RerankConfig"]


class RerankConfig(BaseModel):
    """How the ranked candidates become the final list.

    Relevance of a candidate is its ranker score min-max scaled over the eligible candidates, plus
    ``freshness_weight`` × freshness (1 for this year's movie, halving every ``freshness_half_life``
    years) plus ``popularity_weight`` × popularity (log rating count, scaled to [0, 1]). Maximal
    Marginal Relevance then picks items one by one, trading relevance against similarity to the items
    already picked: ``(1 - diversity) * relevance - diversity * max_similarity``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    diversity: float = Field(
        # 0.1 costs at most 2% of NDCG@10 in pipelines.evaluate (0.3 cost up to 11% before the ranker was
        # retrained for top-N)
        default=0.1, ge=0.0, le=1.0, description="MMR trade-off: 0 = relevance only, 1 = novelty only"
    )
    similarity: Literal["genres", "embedding", "mixed"] = Field(
        default="mixed", description="item similarity for MMR: genre Jaccard, embedding cosine, or their mean"
    )
    freshness_weight: float = Field(default=0.05, ge=0.0, description="weight of recency of the release year")
    freshness_half_life: float = Field(default=10.0, gt=0.0, description="years after which freshness halves")
    popularity_weight: float = Field(default=0.05, ge=0.0, description="weight of log rating count")
    filter_seen: bool = Field(default=True, description="drop items the user has already rated or clicked")
    # 7: the rerank's price on the served list's NDCG@10, measured on the test splits of pipelines.evaluate
    # (ml-latest-small; the settings --tune chose), the rule at 5 / 7 / off: temporal 0.1441 / 0.1439 /
    # 0.1439, random 0.3754 / 0.3841 / 0.3847 against recall's order 0.3889: at 5 the rerank cost 3.5% of
    # the random split's NDCG, at 7 1.2%
    max_per_genre: int | None = Field(default=7, ge=1, description="business rule: at most N items sharing one genre")
    fill: bool = Field(
        default=True, description="when the rules leave fewer than k items, fill the list with the items max_per_genre held back"
    )
    exclude_genres: tuple[str, ...] = Field(default=(), description="business rule: never show items of these genres")

    @field_validator("exclude_genres", mode="before")
    @classmethod
    def _listish(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else v
