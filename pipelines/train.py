"""The training job: train, evaluate and register the ranker or the two-tower retriever.

    python -m pipelines.train --model ranker|retriever [--num-workers N] [--use-gpu]
                              [--artifacts URI] [--run-name NAME] [--epochs N] [--max-users N]

Trains on ``samples/train`` of the live features version with Ray Train (``TorchTrainer``, N workers,
CPU or GPU), evaluates on ``samples/test`` and publishes ``models/<name>/<version>`` (+ ``LATEST``).
Checkpoints go to ``<artifacts>/train_runs/<run name>``: rerunning with the same ``--run-name`` resumes.
Runs unchanged on a cluster:

    ray job submit --working-dir . -- python -m pipelines.train --model retriever --num-workers 2
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines._common import HelpFormatter, add_common_args, artifacts_arg, init_ray, setup_logging
from rayrec.shared import ArtifactsNotShared, check_shared
from rayrec.training import JobConfig, TrainingError, default_train_config, run_job
from rayrec.training.data import features_path


def _summary(result) -> str:  # noqa: ANN001
    m = result.metrics
    lines = [f"model          {result.name} version {result.version or '(not published)'} (run {result.run_name})"]
    fmt = lambda d: "  ".join(f"{k} {v:.4f}" for k, v in d.items() if k not in ("users", "rows"))  # noqa: E731
    lines.append(f"test           {fmt(m['test'])}")
    if "test_topn" in m:  # the ranker's ranking score: liked test rows against their sampled negatives
        lines.append(f"test (top-n)   {fmt(m['test_topn'])}")
    if "popularity" in m:
        lines.append(f"popularity     {fmt(m['popularity'])}")
    if "valid" in m:
        lines.append(f"selection      {m['valid']['best_epoch']} epoch(s), valid metric {m['valid']['metric']:.4f}")
    if "refit_from" in m:
        lines.append(f"refit          from {m['refit_from']}, {m['train_rows']['refit']:,} rows")
    lines.append("timings        " + "  ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    if result.path:
        lines.append(f"registry       {result.path}")
    return "\n".join(lines)


def _model_settings(model: str, pairs: list[str]):  # noqa: ANN202
    """The model config with ``KEY=VALUE`` overrides (values parsed as YAML: numbers, lists, words)."""
    if not pairs:
        return None
    import yaml

    from rayrec.models import model_config

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        return model_config(model, overrides)
    except TypeError as e:
        raise ValueError(f"--set: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Train, evaluate and register a model on Ray Train.")
    parser.add_argument("--model", required=True, choices=["ranker", "retriever"])
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (default 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, mixed precision")
    parser.add_argument("--placement", choices=["SPREAD", "PACK"], default="SPREAD",
                        help="workers on different nodes where possible (SPREAD, CPU training) or on as few as fit (PACK)")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5, help="CPUs reserved per worker (fractional ok)")
    parser.add_argument("--threads", type=int, default=0,
                        help="PyTorch threads per worker (default 0: as Ray starts it, one for a fractional CPU)")
    parser.add_argument("--dense-tables", action="store_true",
                        help="update every row of the user-id tables each step (the default, one CPU worker: only the rows "
                        "a batch reads, the same result)")
    parser.add_argument("--features-version", default="latest", help="features version to train on")
    parser.add_argument("--run-name", default=None, help="name of the run; reuse it to resume an interrupted job")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs (early stopping may end sooner)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per-worker batch size (default: the model's; the ranker's grows 4× from 4M training rows, "
                             "its learning rate 2×: either option keeps what is given)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--no-refit", action="store_true", help="keep the early-stopped model instead of refitting on all train rows")
    parser.add_argument("--refit-on", choices=["all", "train"], default="all",
                        help="the refit learns from every sample (all: train + test; the test metrics then come from the "
                        "selection model) or from the train samples only")
    parser.add_argument("--refit-from", choices=["auto", "scratch", "selection"], default="auto",
                        help="the refit trains new weights for the selected epochs on every sample (scratch), or "
                        "continues the selection's model for one pass over the samples it did not see (selection); "
                        "auto: selection when one epoch was selected, else scratch")
    parser.add_argument("--max-users", type=int, default=None, help="train on the first N users only (quick check)")
    parser.add_argument("--no-publish", action="store_true", help="evaluate without registering the model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model setting (RankerConfig / TwoTowerConfig field), e.g. --set like_weight=0.5")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}.items() if v is not None}
    try:
        train = default_train_config(
            args.model, num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
            placement=args.placement, threads=args.threads, lazy_tables=not args.dense_tables, refit=not args.no_refit, refit_on=args.refit_on,
            refit_from=args.refit_from, **overrides,
        )  # fmt: skip
        cfg = JobConfig(
            name=args.model, artifacts=artifacts_arg(args.artifacts), features_version=args.features_version,
            train=train, model=_model_settings(args.model, args.set), run_name=args.run_name,
            max_users=args.max_users, publish=not args.no_publish,
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    try:
        features_path(cfg.artifacts, cfg.features_version)  # fail before starting Ray
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_ray(args.address)
    try:
        check_shared(cfg.artifacts)  # Train workers on other nodes write checkpoints there
        result = run_job(cfg)
    except (FileNotFoundError, ValueError, TrainingError, ArtifactsNotShared) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_summary(result), flush=True)
    if args.verbose:
        print(json.dumps(result.metrics, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
