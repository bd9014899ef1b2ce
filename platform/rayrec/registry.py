"""The model registry: ``<artifacts>/models/<name>/<version>/`` plus a ``LATEST`` pointer.

A version folder holds

* ``weights.safetensors``: the weights (safetensors: loading never unpickles anything);
* ``config.json``: the model kind, its config and the FeatureSpec table sizes it was built with;
* ``meta.json``: the FeatureSpec hash and features version it was trained against, the training
  data range, the training config and run name, the creation time;
* ``metrics.json``: the test metrics measured by the job (and its baselines);
* any extra files of the model (the retriever's ``item_embeddings.parquet``).

Everything is written into the new version folder first; ``LATEST`` is swapped last, in one rename,
so a reader sees either the old model or the complete new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rayrec import uri
from rayrec.features.spec import FeatureSpec

__all__ = [
    "SpecMismatchError",
    "StoredModel",
    "models_root",
    "publish",
    "load",
    "check_spec",
    "list_versions",
    "WEIGHTS",
    "CONFIG",
    "META",
    "METRICS",
]

WEIGHTS, CONFIG, META, METRICS = "weights.safetensors", "config.json", "meta.json", "metrics.json"


class SpecMismatchError(ValueError):
    """A model is used with encoders (FeatureSpec) other than the ones it was trained against."""


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: str
    weights: dict[str, torch.Tensor]
    config: dict[str, Any]  # {"kind", "model": {...}, "sizes": {...}}
    meta: dict[str, Any]
    metrics: dict[str, Any]


def models_root(artifacts: str, name: str | None = None) -> str:
    root = uri.join(artifacts, "models")
    return uri.join(root, name) if name else root


def publish(
    artifacts: str,
    name: str,
    *,
    weights: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any],
    files: Mapping[str, bytes] | None = None,
    latest: bool = True,
) -> str:
    """Write a new version of model ``name`` and (with ``latest``) make it live. Returns the version.

    ``meta`` must name the ``spec_hash`` the model was trained against."""
    if "spec_hash" not in meta:
        raise ValueError("model meta must record the FeatureSpec hash (spec_hash) it was trained against")
    version = uri.new_version()
    root = models_root(artifacts, name)
    path = uri.join(root, version)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    for fname, data in (files or {}).items():
        uri.write_bytes(uri.join(path, fname), data)
    uri.write_bytes(uri.join(path, WEIGHTS), save_safetensors(tensors))
    uri.write_json(uri.join(path, CONFIG), dict(config))
    uri.write_json(uri.join(path, METRICS), dict(metrics))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    uri.write_json(uri.join(path, META), {**meta, "name": name, "version": version, "created": created})
    if latest:
        uri.set_latest(root, version)
    return version


def list_versions(artifacts: str, name: str) -> list[str]:
    return uri.list_versions(models_root(artifacts, name))


def load(artifacts: str, name: str, version: str = "latest") -> StoredModel:
    """Read one version (a name or "latest") of model ``name``."""
    root = models_root(artifacts, name)
    try:
        path = uri.resolve_version(root, version)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model {name!r}: {e}. Train it with `python -m pipelines.train --model {name}`.") from None
    weights = load_safetensors(uri.read_bytes(uri.join(path, WEIGHTS)))
    config = uri.read_json(uri.join(path, CONFIG))
    meta = uri.read_json(uri.join(path, META))
    metrics_uri = uri.join(path, METRICS)
    metrics = uri.read_json(metrics_uri) if uri.exists(metrics_uri) else {}
    return StoredModel(name, path.rsplit("/", 1)[-1], path, weights, config, meta, metrics)


def check_spec(meta: Mapping[str, Any], spec: FeatureSpec) -> None:
    """Raise :class:`SpecMismatchError` unless ``spec`` is the FeatureSpec the model (``meta``: its
    meta.json) was trained against."""
    want = meta.get("spec_hash")
    if spec.hash != want:
        name = meta.get("name", "?")
        raise SpecMismatchError(
            f"model {name!r} version {meta.get('version')} was trained against FeatureSpec {want} "
            f"(features version {meta.get('features_version')}), but the FeatureSpec given is {spec.hash}: "
            "its vocabularies and encoders differ, so ids would map to the wrong embeddings. Retrain the "
            f"model on the current features (`python -m pipelines.train --model {name}`) or use the "
            "features version it was trained on."
        )
