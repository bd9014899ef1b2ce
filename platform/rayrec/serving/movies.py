"""Movie fields of an answer from an online-store item row, or from the in-memory catalog when the
store lacks the item."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayrec.serving.bundle import Bundle

__all__ = ["movie_fields", "year_of"]


def year_of(row: dict[str, Any] | None) -> int | None:
    y = row.get("item_year") if row else None
    return int(y) if isinstance(y, (int, float)) and y == y else None


def movie_fields(movie_id: int, row: dict[str, Any] | None, bundle: Bundle) -> dict[str, Any]:
    """Movie fields from a store row, or from the in-memory catalog when the store lacks the item."""
    if row is not None:
        count, mean = row.get("item_rating_count"), row.get("item_rating_mean")
        return {
            "movie_id": int(movie_id), "title": row.get("title"), "genres": list(row.get("genres") or []),
            "year": year_of(row), "rating_count": int(count) if count is not None else None,
            "rating_mean": float(mean) if mean is not None else None,
        }  # fmt: skip
    return {"movie_id": int(movie_id), "title": bundle.catalog.title_of(movie_id),
            "genres": list(bundle.catalog.genres_of(movie_id))}  # fmt: skip
