"""Fault tests (``make test-faults``): the serving job and its processes under signals and kills.
They start Ray and Serve of their own, so they are kept out of the default run (see pyproject's
addopts). The artifacts are built as the integration tests build them."""

from __future__ import annotations

from integration.conftest import ServingArtifacts, serving_artifacts  # noqa: F401  (the fixture, re-exported)
