"""The ``rayrec`` command: one entry point for the jobs.

    rayrec run [--dataset auto] [--port 8000] …       # = python -m pipelines.main
    rayrec features|train|index|serve|evaluate|experiment|simulate|gc|replay|synthetic [options]
    rayrec <command> --help                           # that job's options, with their defaults

Each command is the job of the same name (``python -m pipelines.<job>`` keeps working); arguments
after the command are passed to it unchanged. A job is imported only when its command runs, so
``rayrec --help`` answers without starting anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

__all__ = ["COMMANDS", "main"]

#: command → (module, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipelines.main", "the whole pipeline on the embedded defaults, then serve (what `make run` runs)"),
    "features": ("pipelines.features", "ratings → samples, online features, FeatureSpec, statistics (Ray Data)"),
    "train": ("pipelines.train", "train, evaluate and register the ranker or the retriever (Ray Train)"),
    "index": ("pipelines.index", "item embeddings → faiss index; --evaluate for per-path recall"),
    "serve": ("pipelines.serve", "deploy the recommender on Ray Serve (--blocking: until Ctrl-C)"),
    "evaluate": ("pipelines.evaluate", "end-to-end evaluation of the published models and index"),
    "experiment": ("pipelines.experiment", "analyse an online experiment (A/B or interleaving) from the logged impressions and events"),
    "simulate": ("pipelines.simulate", "users needed by A/B testing vs interleaving, on simulated users with known tastes"),
    "gc": ("pipelines.gc", "delete old features/models/index versions, never LATEST or one a replica serves"),
    "replay": ("pipelines.replay", "merge the online event log into a MovieLens folder for the next training"),
    "synthetic": ("pipelines.synthetic", "generate a synthetic MovieLens-like dataset"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (
        "usage: rayrec <command> [options]\n\n"
        "A recommender platform on Ray. Commands (each is `python -m <module>`):\n"
        f"{rows}\n\n"
        "`rayrec <command> --help` lists a command's options and their defaults."
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rayrec: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if importlib.util.find_spec(module) is None:
        print(f"rayrec: the `{name}` command needs the {module} job, which this installation does not have",
              file=sys.stderr)  # fmt: skip
        return 2
    job = importlib.import_module(module)
    if not hasattr(job, "main"):
        print(f"rayrec: {module} has no main() to run", file=sys.stderr)
        return 2
    sys.argv[0] = f"rayrec {name}"  # argparse's prog in the job's usage and errors
    code = job.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
