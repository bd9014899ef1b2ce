"""rayrec: a recommender platform on Ray.

Data (MovieLens or synthetic) → features on Ray Data → training on Ray Train → faiss index →
recall → rank → rerank on Ray Serve. Every piece of logic lives in this package; the jobs under
``pipelines/`` and the apps under ``serve_apps/`` are thin wrappers.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
