"""What every job shares: the common flags, logging, and joining a Ray cluster or starting a local one."""

from __future__ import annotations

import argparse
import logging

from rayrec.config import default_artifacts
from rayrec.runtime import init_ray

__all__ = ["HelpFormatter", "add_common_args", "artifacts_arg", "setup_logging", "init_ray", "load_data"]


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
