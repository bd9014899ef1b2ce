"""Datasets: the MovieLens reader, the GroupLens downloader and a synthetic MovieLens-like generator."""

from rayrec.data.download import DATASETS, DatasetInfo, DownloadError, download
from rayrec.data.movielens import (
    NO_GENRES,
    BadRow,
    DataError,
    MovieLens,
    ReadReport,
    parse_genres,
    parse_title,
    read_movielens,
)
from rayrec.data.synthetic import SyntheticConfig, generate

__all__ = [
    "DATASETS",
    "NO_GENRES",
    "BadRow",
    "DataError",
    "DatasetInfo",
    "DownloadError",
    "MovieLens",
    "ReadReport",
    "SyntheticConfig",
    "download",
    "generate",
    "parse_genres",
    "parse_title",
    "read_movielens",
]
