"""Artifacts addressed by URI (``/local/path`` or ``s3://bucket/key``) through ``pyarrow.fs``.

Versions become visible by one pointer swap: ``LATEST`` is written to a temporary name and renamed
(atomic on local and POSIX shared filesystems; a single-object PUT on object stores).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

__all__ = [
    "filesystem",
    "join",
    "write_bytes",
    "read_bytes",
    "write_json",
    "read_json",
    "exists",
    "makedirs",
    "new_version",
    "set_latest",
    "latest",
    "resolve_version",
    "list_versions",
]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a URI and the path inside it. Plain paths are local."""
    if "://" not in uri:
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = out + "/" + str(p).strip("/")
    return out


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: to a temporary sibling, then rename over the target."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no such artifact: {uri}") from e


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode())


def new_version() -> str:
    """A sortable, unique version name: UTC time plus a short random suffix."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def set_latest(base: str, version: str) -> None:
    """Make ``base/version`` the live version by swapping ``base/LATEST`` in one rename."""
    if not exists(join(base, version)):
        raise FileNotFoundError(f"cannot point LATEST at a version that does not exist: {join(base, version)}")
    write_bytes(join(base, "LATEST"), (version + "\n").encode())


def latest(base: str) -> str | None:
    """The live version under ``base``, or None if nothing was published yet."""
    try:
        return read_bytes(join(base, "LATEST")).decode().strip() or None
    except FileNotFoundError:
        return None


def resolve_version(base: str, version: str | None = None) -> str:
    """``base/<version>``, with ``None`` or ``"latest"`` meaning the ``LATEST`` pointer."""
    if version in (None, "", "latest"):
        v = latest(base)
        if v is None:
            raise FileNotFoundError(
                f"nothing published under {base} (no LATEST pointer): run the job that produces it first"
            )
        version = v
    out = join(base, version)
    if not exists(out):
        raise FileNotFoundError(f"version {version!r} not found under {base}")
    return out


def list_versions(base: str) -> list[str]:
    fs, path = filesystem(base)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
