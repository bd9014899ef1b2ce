"""Retrieval: the item index and the multi-path recall in front of the ranker.

- :class:`ItemIndex` (faiss by factory string, keyed by movie id, live ``add``), published as
  ``<artifacts>/index/<version>/`` and read with :func:`load_index`;
- recall paths over a :class:`UserState` (embedding, item-to-item, genre, popular), merged by a
  :class:`Merger` under per-path quotas into :class:`Candidate`\\ s that remember their paths;
- :class:`SimilarItems` for item → similar items;
- offline, the same code answers "what would we retrieve for user u as of time t"
  (:mod:`rayrec.retrieval.offline`).
"""

from rayrec.retrieval.build import IndexBuild, IndexConfig, build_index, load_embeddings, run_index
from rayrec.retrieval.catalog import ItemCatalog, Popularity, read_ratings
from rayrec.retrieval.embeddings import ItemEmbeddings, read_item_embeddings, svd_item_embeddings, write_item_embeddings
from rayrec.retrieval.index import ItemIndex, measure, normalize
from rayrec.retrieval.merge import PATH_NAMES, Candidate, Merger, RecallConfig, build_paths, load_merger
from rayrec.retrieval.paths import (
    EmbeddingRecall,
    GenreRecall,
    ItemToItemRecall,
    NewItemRecall,
    PathResult,
    PopularRecall,
    RecallPath,
)
from rayrec.retrieval.similar import Similar, SimilarItems
from rayrec.retrieval.state import UserState, user_states_as_of
from rayrec.retrieval.versions import index_root, load_index, save_index

__all__ = [
    "PATH_NAMES",
    "Candidate",
    "EmbeddingRecall",
    "GenreRecall",
    "IndexBuild",
    "IndexConfig",
    "ItemCatalog",
    "ItemEmbeddings",
    "ItemIndex",
    "ItemToItemRecall",
    "NewItemRecall",
    "Merger",
    "PathResult",
    "PopularRecall",
    "Popularity",
    "RecallConfig",
    "RecallPath",
    "Similar",
    "SimilarItems",
    "UserState",
    "build_index",
    "build_paths",
    "index_root",
    "load_embeddings",
    "load_index",
    "load_merger",
    "measure",
    "normalize",
    "read_item_embeddings",
    "read_ratings",
    "run_index",
    "save_index",
    "svd_item_embeddings",
    "user_states_as_of",
    "write_item_embeddings",
]
