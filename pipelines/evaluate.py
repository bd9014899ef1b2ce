"""The end-to-end offline evaluation: split, run the main job's offline steps on the known part, serve
every test user through the real serving code, and score each stage and the baselines.

    python -m pipelines.evaluate [--protocol temporal|random|both] [--dataset auto|PATH|...]
                                 [--out DIR] [--epochs N] [--max-users N] [--tune]

Writes ``<out>/<protocol>/`` (scratch artifacts and the known data) and ``<out>/evaluation.json``,
``evaluation.md`` and ``evaluation.html`` (tables and a plot of NDCG@10 per stage). The offline steps
are the main job's own (``pipelines.features``, ``.train``, ``.index``), called with the same flags but
two: the store is an SQLite file under the scratch artifacts, and the index job tunes the ease path's λ
on a split by the evaluated protocol (``--ease-validation``), as the EASE baseline's λ is tuned.

``--tune`` first chooses the ease path's vote in the recall fusion and ``rank_weight`` on a validation
split of the known part (shadow models trained on its known part, under ``<out>/<protocol>/tune``), and
fits a blend of the candidates' features (:mod:`rayrec.serving.blend`) on each vote's validation lists,
kept when it beats the grid out of fold; then serves the test users with what it chose
(:func:`rayrec.evaluation.endtoend.tune_serving`). The settings are in ``evaluation.json`` under
``results[].info.serving_config``: its ``blend`` goes into a serving config as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipelines import features, index, train
from pipelines._common import init_ray, load_data, setup_logging
from rayrec import tracking, uri
from rayrec.data.source import DATASET_CHOICES
from rayrec.evaluation.endtoend import TUNED, EndToEndConfig, tuned_in, run_end_to_end, store_of
from rayrec.evaluation.protocols import PROTOCOLS
from rayrec.evaluation.report import write_reports


def offline_steps(
    epochs: int | None = None, num_workers: int = 1, settings: dict[str, list[str]] | None = None,
    ease_validation: str = "features",
) -> Callable[[str, str], None]:
    """The main job's offline steps (features with an SQLite store under the artifacts, both models, index);
    ``settings``: per model, ``KEY=VALUE`` model settings (``pipelines.train --set``);
    ``ease_validation``: the split the index job tunes the ease path's λ on (``--ease-validation``)."""

    def run(dataset: str, artifacts: str) -> None:
        common = ["--artifacts", artifacts]
        steps = [(features.main, ["--dataset", dataset, "--online-store", store_of(artifacts), *common])]
        extra = ["--epochs", str(epochs)] if epochs else []
        for model in ("ranker", "retriever"):
            sets = [a for kv in (settings or {}).get(model, []) for a in ("--set", kv)]
            steps.append((train.main, ["--model", model, "--num-workers", str(num_workers), *extra, *sets, *common]))
        steps.append((index.main, ["--ease-validation", ease_validation, *common]))
        for fn, argv in steps:
            rc = fn(argv)
            if rc:
                raise SystemExit(f"{fn.__module__} {' '.join(argv)} failed (exit {rc})")

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="End-to-end offline evaluation of the served list against baselines.")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both")
    p.add_argument("--dataset", default="auto", help=f"one of {', '.join(DATASET_CHOICES)}, or a MovieLens folder")
    p.add_argument("--out", default="evaluation", help="output folder (scratch artifacts and reports)")
    p.add_argument("--epochs", type=int, default=None, help="override the models' most epochs")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--max-users", type=int, default=None, help="evaluate the first N users only")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ranker", action="append", default=[], metavar="KEY=VALUE", help="ranker setting (train --set)")
    p.add_argument("--retriever", action="append", default=[], metavar="KEY=VALUE", help="retriever setting (train --set)")
    p.add_argument("--serving", default="{}", help="serving settings over the defaults, as JSON (ServingConfig fields)")
    p.add_argument("--tune", action="store_true",
                   help="choose the ease path's vote and rank_weight on a validation split of the known part first "
                        "(shadow models trained on it; the test split is not looked at)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the models and index a previous run left under --out (compare serving settings)")
    args = p.parse_args(argv)
    try:
        serving = json.loads(args.serving)
        from rayrec.serving.bundle import ServingConfig

        ServingConfig.model_validate(serving)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        p.error(f"--serving: {e}")
    if args.tune and tuned_in(serving):
        p.error(f"--serving sets {tuned_in(serving)}, which --tune chooses ({', '.join(TUNED)}): leave them out, or do not tune")
    setup_logging()
    data = load_data(args.dataset)
    if data is None:
        return 2
    print(f"dataset: {data.source} ({len(data.ratings):,} ratings)", flush=True)
    if not args.reuse:
        init_ray()
    out = Path(args.out)
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    results = []
    for name in protocols:
        t = time.perf_counter()
        work = out / name
        if work.exists() and not args.reuse:  # a fresh scratch folder per run: old versions would be served otherwise
            import shutil

            shutil.rmtree(work)
        cfg = EndToEndConfig(protocol=name, k=args.k, max_users=args.max_users, serving=serving, tune=args.tune)
        # the ease path's λ is tuned on a split by the protocol the lists are judged by, as the EASE baseline's is
        settings = {"ranker": args.ranker, "retriever": args.retriever}
        steps = None if args.reuse else offline_steps(args.epochs, args.num_workers, settings, ease_validation=name)
        result = run_end_to_end(data, steps, work, cfg)
        result.info["wall_s"] = time.perf_counter() - t
        result.info["dataset"] = data.source
        results.append(result)
        print(f"[{name}] done in {result.info['wall_s']:.0f}s", flush=True)
    paths = write_reports(results, out)
    print((out / "evaluation.md").read_text(), flush=True)
    print("reports: " + ", ".join(str(p) for p in paths), flush=True)
    uri.write_json(str(out / "evaluation.json"), {"results": [r.to_dict() for r in results]})
    for r in results:  # one MLflow run per protocol when MLFLOW_TRACKING_URI is set
        tracking.log_run(f"evaluate.{r.protocol}", f"evaluate-{r.protocol}",
                         params={"dataset": data.source, "k": args.k, "reuse": args.reuse, "serving": r.info["serving_config"],
                                 "versions": r.info["versions"]},
                         metrics={"lists": r.rows, "users": r.info["users"]}, files=[*map(str, paths), str(out / "evaluation.json")])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
