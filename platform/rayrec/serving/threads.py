"""One compute thread per serving process.

A replica's parallelism is its requests and the replicas beside it, not threads inside one request.
Left to themselves, numpy's OpenBLAS, faiss's OpenBLAS and OpenMP, and torch each start a thread per
core, and a product as small as a query against the item vectors (1 × 64 by 64 × 10k) is split across
them: alone on a machine that looks free, but processes side by side spin against each other. On the
2-core development machine two processes running the recommender in a loop each took 25 ms per
request with the default pools, against 10-11 ms with one thread each (9-10 ms for one alone).

Ray sizes an actor's pools by its CPUs (``OMP_NUM_THREADS``: 1 for the fractional CPUs of the default
replicas, 2 for ``num_cpus: 2``). :func:`single_threaded` makes one thread the rule wherever the
serving code runs: a replica given several CPUs (which serves several requests at once instead), and
the in-process floor of the serving benchmark, a plain process that would otherwise compute with more
threads than the replicas it is compared with.
"""

from __future__ import annotations

__all__ = ["single_threaded", "pool_sizes"]


def single_threaded() -> dict[str, int]:
    """Cap torch's intra-op pool and every BLAS / OpenMP pool loaded in this process at one thread
    (what a serving replica and the in-process benchmark floor call first). Returns the pools'
    sizes afterwards, by library."""
    import faiss
    import numpy  # noqa: F401  (its OpenBLAS must be loaded to be capped)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # applies at once and stays (only a `with` block would restore it)
    faiss.omp_set_num_threads(1)
    return pool_sizes()


def pool_sizes() -> dict[str, int]:
    """The thread pools loaded in this process and their sizes: torch, and each BLAS / OpenMP
    library (by its internal API, e.g. ``openblas``, ``openmp``; the largest when several)."""
    import torch
    from threadpoolctl import threadpool_info

    out = {"torch": int(torch.get_num_threads())}
    for pool in threadpool_info():
        name = str(pool["internal_api"])
        out[name] = max(out.get(name, 0), int(pool["num_threads"]))
    return out
