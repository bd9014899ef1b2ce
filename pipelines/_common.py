"""What every job shares: the common flags, logging, and joining a Ray cluster or starting a local one."""

from __future__ import annotations

import argparse
import logging
import os

from rayrec.config import default_artifacts


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it is unset or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return super()._get_help_string(action) or text


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default=None, help="artifacts URI: a local path or s3://… (default: RAYREC_ARTIFACTS or ./artifacts)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def artifacts_arg(value: str | None) -> str:
    return value or default_artifacts()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def init_ray(address: str | None = None, ingress: str | None = None, **kwargs) -> None:
    """Join the cluster a job was submitted to (``ray job submit`` sets RAY_ADDRESS) or ``--address``,
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


def load_data(name: str):  # noqa: ANN201
    """The dataset a job asked for (``--dataset``), or None after printing why it cannot be read."""
    import sys

    from rayrec.data import DataError
    from rayrec.data.source import load_dataset

    try:
        return load_dataset(name)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
