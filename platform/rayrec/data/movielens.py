"""MovieLens reader for the ml-latest / ml-20m / ml-25m CSV layout.

Files: ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv`` (movieId,title,genres),
optional ``links.csv`` (movieId,imdbId,tmdbId) and ``tags.csv`` (userId,movieId,tag,timestamp).

A malformed row is counted and reported with its file, line and reason instead of crashing the read
or vanishing silently. ``ratings.csv``, the one large file, is first read typed by Arrow's parallel
reader (no text copy of 25M rows); a file that is not clean numbers throughout is read again the slow
way, every value parsed as text and validated column by column, which finds each bad row's line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = [
    "MovieLens",
    "ReadReport",
    "BadRow",
    "DataError",
    "read_movielens",
    "parse_title",
    "parse_genres",
    "NO_GENRES",
]

NO_GENRES = "(no genres listed)"
_YEAR_RE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_SCHEMAS: dict[str, tuple[str, ...]] = {
    "ratings.csv": ("userId", "movieId", "rating", "timestamp"),
    "movies.csv": ("movieId", "title", "genres"),
    "links.csv": ("movieId", "imdbId", "tmdbId"),
    "tags.csv": ("userId", "movieId", "tag", "timestamp"),
}
_MAX_EXAMPLES = 20


class DataError(ValueError):
    """A dataset file is missing, unreadable, or not in the MovieLens layout."""


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int | None  # 1-based line in the file (header is line 1); None when the parser cannot tell
    reason: str


@dataclass
class ReadReport:
    """Malformed rows per file: counts plus the first few examples with line and reason."""

    rows_read: dict[str, int] = field(default_factory=dict)
    bad_counts: dict[str, int] = field(default_factory=dict)
    examples: list[BadRow] = field(default_factory=list)

    def add(self, file: str, line: int | None, reason: str) -> None:
        self.bad_counts[file] = self.bad_counts.get(file, 0) + 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(BadRow(file, line, reason))

    @property
    def total_bad(self) -> int:
        return sum(self.bad_counts.values())

    def summary(self) -> str:
        if not self.total_bad:
            return "no malformed rows"
        parts = [f"{n} malformed row(s) in {f}" for f, n in sorted(self.bad_counts.items())]
        lines = ["; ".join(parts) + " (skipped):"]
        lines += [f"  {b.file}:{b.line if b.line is not None else '?'}: {b.reason}" for b in self.examples]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_read": dict(self.rows_read),
            "bad_counts": dict(self.bad_counts),
            "examples": [b.__dict__ for b in self.examples],
        }


@dataclass
class MovieLens:
    """A loaded dataset. Column names are MovieLens's own (``userId``, ``movieId``) at this edge."""

    ratings: pd.DataFrame  # userId int64, movieId int64, rating float32, timestamp int64
    movies: pd.DataFrame  # movieId int64, title str, year Int64 (nullable), genres list[str]
    links: pd.DataFrame | None
    tags: pd.DataFrame | None
    report: ReadReport
    source: str


def parse_title(title: str) -> int | None:
    """Release year from a MovieLens title such as ``"Heat (1995)"``; None if the title has none."""
    m = _YEAR_RE.search(title or "")
    return int(m.group(1)) if m else None


def parse_genres(genres: str | None) -> list[str]:
    """``"Action|Crime"`` → ``["Action", "Crime"]``; ``"(no genres listed)"`` → ``[]``."""
    if not genres or genres == NO_GENRES:
        return []
    return [g for g in genres.split("|") if g]


def _check_header(path: Path) -> tuple[str, ...]:
    """The file's expected columns, once its header says them; :class:`DataError` otherwise."""
    name = path.name
    expected = _SCHEMAS[name]
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the MovieLens file {name})")
    try:
        with open(path, "rb") as f:
            header = f.readline().decode("utf-8-sig").strip().split(",")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the header ({e})") from e
    if tuple(h.strip() for h in header) != expected:
        raise DataError(f"{path}: header is {','.join(header)!r}, expected {','.join(expected)!r}")
    return expected


def _read_text_table(path: Path, report: ReadReport) -> pd.DataFrame:
    """Read a CSV with every column as text, reporting rows with the wrong number of fields."""
    name = path.name
    expected = _check_header(path)

    # Lines where the field count is wrong: pyarrow hands them to us instead of failing the read.
    skipped: list[tuple[int | None, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append((row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            # Serial parsing keeps line numbers exact for every skipped row.
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=name == "movies.csv"),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in expected}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from e
    for line, reason in skipped:
        report.add(name, line, reason)
    df = table.to_pandas()
    # Line numbers of the kept rows: header is line 1, skipped lines are not in the table.
    skipped_lines = sorted(n for n, _ in skipped if n is not None)
    lines = np.arange(len(df), dtype=np.int64) + 2
    if skipped_lines:
        # Each kept row moves down by the number of skipped lines at or before its position.
        sk = np.asarray(skipped_lines, dtype=np.int64)
        for _ in range(2):  # converges: shifting can pass at most a few more skipped lines
            lines = np.arange(len(df), dtype=np.int64) + 2 + np.searchsorted(sk, lines, side="right")
    df["_line"] = lines
    return df


def _drop_bad(df: pd.DataFrame, bad: pd.Series, reason: str, report: ReadReport, file: str) -> pd.DataFrame:
    n = int(bad.sum())
    if not n:
        return df
    report.bad_counts[file] = report.bad_counts.get(file, 0) + n
    for line in df.loc[bad, "_line"].tolist()[: max(0, _MAX_EXAMPLES - len(report.examples))]:
        report.examples.append(BadRow(file, int(line), reason))
    return df.loc[~bad]


_RATING_TYPES = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}


def _read_ratings_typed(path: Path) -> pd.DataFrame | None:
    """``ratings.csv`` read typed, in parallel, with a ``_line`` column; None when any row is not
    four clean numbers (a wrong field count, text, a blank, NaN or infinity): the text reader then
    finds and reports those rows. Every row this accepts, the text reader would accept alike."""
    expected = _check_header(path)
    malformed = False

    def on_invalid(row: pacsv.InvalidRow) -> str:
        nonlocal malformed
        malformed = True
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(expected), skip_rows=1, use_threads=True),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=_RATING_TYPES, null_values=[""], strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # a value that is not a number of its column's type
    except OSError as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from e
    if malformed or any(table.column(c).null_count for c in expected):
        return None
    rating = table.column("rating").to_numpy()
    if not np.isfinite(rating).all():
        return None
    return pd.DataFrame({
        "_line": np.arange(table.num_rows, dtype=np.int64) + 2,  # header is line 1, and no line was skipped
        "userId": table.column("userId").to_numpy(), "movieId": table.column("movieId").to_numpy(),
        "rating": rating, "timestamp": table.column("timestamp").to_numpy(),
    })  # fmt: skip


def _read_ratings(path: Path, report: ReadReport) -> pd.DataFrame:
    file = path.name
    typed = _read_ratings_typed(path)
    if typed is not None:
        return _checked_ratings(typed, report, file)
    df = _read_text_table(path, report)
    out = pd.DataFrame({"_line": df["_line"]})
    for col, kind in (("userId", "int"), ("movieId", "int"), ("rating", "float"), ("timestamp", "int")):
        out[col] = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = out[col].isna() | ~np.isfinite(out[col].astype("float64"))
        if kind == "int":
            bad |= (out[col].fillna(0) != np.floor(out[col].fillna(0))) | (out[col].abs() >= 2.0**63)  # past int64
        out = _drop_bad(out, bad, f"{col} is not a valid {kind}", report, file)
        df = df.loc[out.index]
    return _checked_ratings(out, report, file)


def _checked_ratings(out: pd.DataFrame, report: ReadReport, file: str) -> pd.DataFrame:
    """Parsed ratings (with ``_line``) less those out of range, in the reader's dtypes."""
    bad = (out["rating"] < 0.5) | (out["rating"] > 5.0)
    out = _drop_bad(out, bad, "rating outside 0.5..5.0", report, file)
    bad = (out["userId"] < 0) | (out["movieId"] < 0) | (out["timestamp"] < 0)
    out = _drop_bad(out, bad, "negative id or timestamp", report, file)
    report.rows_read[file] = len(out)
    return pd.DataFrame(
        {
            "userId": out["userId"].to_numpy(np.int64),
            "movieId": out["movieId"].to_numpy(np.int64),
            "rating": out["rating"].to_numpy(np.float32),
            "timestamp": out["timestamp"].to_numpy(np.int64),
        }
    )


def _read_movies(path: Path, report: ReadReport) -> pd.DataFrame:
    file = path.name
    df = _read_text_table(path, report)
    ids = pd.to_numeric(df["movieId"].str.strip(), errors="coerce")
    bad = ids.isna() | (ids.fillna(0) != np.floor(ids.fillna(0))) | (ids.fillna(0) < 0)
    df = _drop_bad(df.assign(movieId=ids), bad, "movieId is not a valid int", report, file)
    dup = df["movieId"].duplicated(keep="first")
    df = _drop_bad(df, dup, "duplicate movieId (first row kept)", report, file)
    report.rows_read[file] = len(df)
    return pd.DataFrame(
        {
            "movieId": df["movieId"].to_numpy(np.int64),
            "title": df["title"].astype(str).to_numpy(),
            "year": pd.array([parse_title(t) for t in df["title"]], dtype="Int64"),
            "genres": [parse_genres(g) for g in df["genres"]],
        }
    )


def _read_optional(path: Path, report: ReadReport) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    file = path.name
    df = _read_text_table(path, report)
    int_cols = [c for c in _SCHEMAS[file] if c in ("userId", "movieId", "timestamp")]
    for col in int_cols:
        vals = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = vals.isna() | (vals.fillna(0) != np.floor(vals.fillna(0)))
        df = _drop_bad(df.assign(**{col: vals}), bad, f"{col} is not a valid int", report, file)
        df[col] = df[col].astype(np.int64)
    if file == "links.csv":
        df["imdbId"] = df["imdbId"].astype(str)
        df["tmdbId"] = pd.to_numeric(df["tmdbId"].str.strip(), errors="coerce").astype("Int64")
    report.rows_read[file] = len(df)
    return df.drop(columns=["_line"]).reset_index(drop=True)


def read_movielens(path: str | Path, *, source: str | None = None) -> MovieLens:
    """Read a MovieLens folder. A missing or wrong required file raises :class:`DataError` naming it;
    malformed rows are skipped and listed in ``report`` (file, line, reason)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (expected ratings.csv and movies.csv inside)")
    report = ReadReport()
    ratings = _read_ratings(root / "ratings.csv", report)
    movies = _read_movies(root / "movies.csv", report)
    links = _read_optional(root / "links.csv", report)
    tags = _read_optional(root / "tags.csv", report)
    return MovieLens(ratings, movies, links, tags, report, source or str(root))
