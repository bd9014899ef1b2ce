"""Datasets: the MovieLens reader, the GroupLens downloader and a synthetic MovieLens-like generator."""

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

__all__ = [
    "NO_GENRES",
    "BadRow",
    "DataError",
    "MovieLens",
    "ReadReport",
    "parse_genres",
    "parse_title",
    "read_movielens",
]
