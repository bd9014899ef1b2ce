"""The multi-node cluster test runs only when selected (``make test-cluster``: ``pytest -m cluster``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a multi-node Ray cluster test: run it with `make test-cluster`")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)
