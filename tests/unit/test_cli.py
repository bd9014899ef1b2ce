"""The ``rayrec`` command: declared as the package's console script, it lists the jobs, runs each one
with its arguments unchanged (``--help`` shows the defaults), and says clearly what it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipelines import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_declared_and_every_job_is_packaged():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["rayrec"] == "pipelines.cli:main"
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"rayrec*", "pipelines*", "serve_apps*"} <= set(include)  # the script runs outside the repo too


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("run", "features", "train", "index", "serve", "evaluate", "replay"):
        assert f"\n  {name} " in text


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("command, default", [("run", "(default: 8000)"), ("serve", "(default: fused)")])
def test_a_command_is_its_job_and_its_help_shows_defaults(command, default):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", command, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: rayrec {command} ")
    assert default in " ".join(out.stdout.split())


def test_arguments_reach_the_job_unchanged(tmp_path, capsys):
    assert cli.main(["synthetic", "--out", str(tmp_path / "d"), "--users", "20", "--items", "40",
                     "--ratings", "400", "--seed", "3"]) == 0  # fmt: skip
    assert (tmp_path / "d" / "ratings.csv").read_text().count("\n") == 401  # header + the ratings asked for


def test_evaluate_dispatches_to_its_job_or_says_it_is_missing(monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("pipelines.evaluate") is not None:
        import pipelines.evaluate as job

        seen = []
        monkeypatch.setattr(job, "main", lambda argv: seen.append(argv) or 0)
        assert cli.main(["evaluate", "--x", "1"]) == 0 and seen == [["--x", "1"]]
    monkeypatch.setitem(cli.COMMANDS, "evaluate", ("pipelines.no_such_job", "x"))
    assert cli.main(["evaluate"]) == 2
    assert "needs the pipelines.no_such_job job" in capsys.readouterr().err
