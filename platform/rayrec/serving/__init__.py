"""Online serving: recall → rank → rerank in process, its HTTP API and the web page.

Nothing here imports Ray: the Serve deployments in ``serve_apps/`` wrap these pieces, and tests and
the compute-floor benchmark use them directly.

- :class:`ServingConfig`, :func:`load_bundle`: what a replica serves (versioned artifacts, settings);
- :class:`Recommender`: the recall / rank / rerank stages over a bundle;
- :class:`RecommenderService`: the async backend (store deadlines, degrade paths, hot swap, events);
- :func:`create_app`: the FastAPI app (API + web page) over a backend;
- :mod:`rayrec.serving.testing`: a store double that fails or hangs on demand.
"""

from rayrec.serving.bundle import Bundle, ServingConfig, load_bundle
from rayrec.serving.core import Ranked, Recalled, Recommender
from rayrec.serving.http import create_app
from rayrec.serving.service import RecommenderService

__all__ = [
    "Bundle",
    "ServingConfig",
    "load_bundle",
    "Recalled",
    "Ranked",
    "Recommender",
    "RecommenderService",
    "create_app",
]
