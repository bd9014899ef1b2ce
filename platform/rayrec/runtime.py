"""Joining a Ray cluster, or starting a local one: how every job starts Ray."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["init_ray"]


def init_ray(address: str | None = None, ingress: str | None = None, **kwargs: Any) -> None:
    """Join the cluster a job was submitted to (``ray job submit`` sets RAY_ADDRESS) or ``address``,
    else start a local Ray for this job, whose Serve uses the ``ingress`` front door
    (:mod:`rayrec.serving.ingress`; None: ``RAYREC_INGRESS``, else ``auto``)."""
    import ray

    from rayrec.serving.ingress import apply_ingress

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:  # a Ray of this job's own: never attach to whatever cluster happens to run on this machine
        apply_ingress(ingress)  # read by Serve's controller from the environment it inherits
        ray.init(address="local", include_dashboard=False, **kwargs)
