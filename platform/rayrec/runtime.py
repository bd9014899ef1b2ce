"""Joining a Ray cluster, or starting a local one: how every job starts Ray."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["init_ray", "train_env", "object_store_bytes", "TRAIN_HEALTH_CHECK_S", "OBJECT_STORE_ENV", "DEFAULT_OBJECT_STORE_GIB"]

#: the size of a local Ray's object store, in GiB, or ``ray`` for Ray's own (30% of the machine's
#: memory). Its shared memory, once written, stays resident until Ray stops, even when every object in
#: it is freed: a job of several steps in one Ray carries the store's high-water mark from step to
#: step. Beyond its size Ray spills objects to disk.
OBJECT_STORE_ENV = "RAYREC_OBJECT_STORE_GIB"
#: the size when the environment does not say (or 30% of the machine's memory, Ray's own share, where
#: that is less): measured on the main job at 5M ratings here, a 2 GiB store against Ray's 6.9 GiB cut
#: the peak from 11.29 to 8.33 GiB at the same wall time (1,118 s and 1,127 s)
DEFAULT_OBJECT_STORE_GIB = 2.0

#: how often Ray Train's controller checks on its workers (Ray's default: 2 s). A fit returns only
#: after the check that finds its loop done, and a run of the main job makes four fits (a selection
#: and a refit per model): measured on a trivial fit here, 3–5 s from the loop's end to ``fit()``'s
#: return with the default, 1–2 s with 0.5 s (1 s with 0.2 s; the samples/s of a CPU loop did not
#: move beyond the noise at either)
TRAIN_HEALTH_CHECK_S = 0.5


def train_env() -> None:
    """Ray Train's settings that its controller reads from the environment it inherits (a local
    Ray's processes inherit the driver's): set where the user has not set them. A cluster started
    with ``ray start`` reads them from the environment of that command."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_HEALTH_CHECK_S))


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
        store = object_store_bytes()  # checked first: a bad value is refused before anything is set
        apply_ingress(ingress)  # read by Serve's controller from the environment it inherits
        train_env()
        if store is not None:
            kwargs.setdefault("object_store_memory", store)
        ray.init(address="local", include_dashboard=False, **kwargs)


def object_store_bytes() -> int | None:
    """The object store size of a local Ray, in bytes: what :data:`OBJECT_STORE_ENV` asks for, else
    :data:`DEFAULT_OBJECT_STORE_GIB` (at most 30% of the machine's memory); None for Ray's own
    (``ray``). A value that is neither is a ValueError naming the variable."""
    import psutil

    raw = os.environ.get(OBJECT_STORE_ENV, "").strip()
    if raw.lower() == "ray":
        return None
    if not raw:
        return min(int(DEFAULT_OBJECT_STORE_GIB * 2**30), int(0.3 * psutil.virtual_memory().total))
    try:
        gib = float(raw)
    except ValueError:
        gib = float("nan")
    if not gib > 0 or gib == float("inf"):
        raise ValueError(f"{OBJECT_STORE_ENV}={raw!r}: expected a positive number of GiB (e.g. 2 or 0.5), or 'ray' for Ray's own size")
    # Ray refuses a store under 75 MiB
    return max(int(gib * 2**30), 80 * 2**20)
