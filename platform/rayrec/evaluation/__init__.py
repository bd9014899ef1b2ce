"""Offline metrics: classification quality of the ranker, top-k retrieval quality of the retriever."""

from rayrec.evaluation.classification import accuracy, classification_metrics, logloss, pr_auc, roc_auc
from rayrec.evaluation.retrieval import RetrievalTask, build_task, evaluate, popularity_scores, top_k

__all__ = [
    "RetrievalTask",
    "accuracy",
    "build_task",
    "classification_metrics",
    "evaluate",
    "logloss",
    "popularity_scores",
    "pr_auc",
    "roc_auc",
    "top_k",
]
