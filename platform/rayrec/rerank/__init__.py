"""Rerank: the last stage of recall → rank → rerank.

Takes the ranker's scored candidates and builds the list a user sees: seen items and excluded genres
filtered out, freshness and popularity blended into relevance, then Maximal Marginal Relevance over
genre and embedding similarity, under business rules such as "at most N per genre". Settings live
in :class:`RerankConfig` and can be changed while serving (Serve ``user_config``).
"""

from rayrec.rerank.config import RerankConfig
from rayrec.rerank.mmr import Candidates, Reranked, relevance, rerank

__all__ = ["RerankConfig", "Candidates", "Reranked", "rerank", "relevance"]
