"""Writes and per-user reads need the bearer token when one is configured (over real HTTP, on a
loopback port); the token comes from the environment or a file; the serving job refuses a
non-loopback address without one unless told to."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from realtime_doubles import item_rows, toy_movies

from rayrec.realtime import Realtime, RealtimeConfig
from rayrec.retrieval.catalog import ItemCatalog
from rayrec.serving import create_app
from rayrec.serving.security import OpenBind, SecurityConfig, check_bind, is_loopback
from rayrec.serving.testing import EventsBackend
from rayrec.store import open_store

TOKEN = "s3cr3t-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, EventsBackend]]:
    """The app with a token, served by uvicorn on 127.0.0.1 in a thread of this process."""
    movies = toy_movies()
    store = open_store(f"sqlite://{tmp_path}/store.db")
    store.load("item", item_rows(movies), key="movieId")
    backend = EventsBackend(Realtime(store, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(item_rows(movies))))
    app = create_app(backend, security=SecurityConfig.from_env({"RAYREC_API_TOKEN": TOKEN}))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", backend
    srv.should_exit = True
    thread.join(5)
    store.close()


def http(url: str, body: Any = None, token: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_protected_endpoints_answer_401_without_403_wrong_200_with(server) -> None:
    url, backend = server
    movie = int(backend.rt.catalog.movie_ids[0])
    protected = [
        (f"{url}/events", {"kind": "rating", "user_id": 3, "movie_id": movie, "value": 4.0}),
        (f"{url}/items", {"title": "Night Shift", "genres": [], "year": 2024}),
        (f"{url}/recommend?user_id=3&k=5", None),
        (f"{url}/users/3", None),
    ]
    for target, body in protected:
        status, out, headers = http(target, body)
        assert status == 401 and out["field"] == "authorization" and headers.get("www-authenticate") == "Bearer", (target, out)
        status, out, _ = http(target, body, token=TOKEN[:-1] + "x")
        assert status == 403 and out["field"] == "authorization", (target, out)
    assert backend.rt.store.log_length("events") == 0 and backend.rt.store.log_length("items") == 0
    for target, body in protected:
        status, out, _ = http(target, body, token=TOKEN)
        assert status == 200, (target, out)
    assert backend.rt.store.log_length("events") == 1
    for open_path in ("/healthz", f"/movies/{movie}", "/openapi.json"):  # the catalog, health and schema stay open
        assert http(url + open_path)[0] == 200, open_path


def test_the_token_comes_from_the_environment_or_a_file(tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert SecurityConfig.from_env({"RAYREC_API_TOKEN_FILE": str(f)}).token.get_secret_value() == TOKEN
    assert SecurityConfig.from_env({}).token is None
    for env, match in [({"RAYREC_API_TOKEN": "short"}, "at least 16"),
                       ({"RAYREC_API_TOKEN_FILE": str(tmp_path / "missing")}, "cannot read"),
                       ({"RAYREC_API_TOKEN": TOKEN, "RAYREC_API_TOKEN_FILE": str(f)}, "not both")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            SecurityConfig.from_env(env)
    assert TOKEN not in repr(SecurityConfig.from_env({"RAYREC_API_TOKEN": TOKEN}))


def test_a_non_loopback_bind_needs_a_token_or_an_explicit_opt_out(monkeypatch) -> None:
    monkeypatch.delenv("RAYREC_ALLOW_OPEN", raising=False)
    open_, closed = SecurityConfig(), SecurityConfig.from_env({"RAYREC_API_TOKEN": TOKEN})
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, open_)
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        with pytest.raises(OpenBind, match="RAYREC_API_TOKEN"):
            check_bind(host, open_)
        check_bind(host, closed)
        check_bind(host, open_, allow_open=True)
    monkeypatch.setenv("RAYREC_ALLOW_OPEN", "1")
    check_bind("0.0.0.0", open_)


def test_the_serving_job_refuses_before_starting_anything(monkeypatch, capsys) -> None:
    from pipelines import serve

    monkeypatch.delenv("RAYREC_API_TOKEN", raising=False)
    monkeypatch.delenv("RAYREC_API_TOKEN_FILE", raising=False)
    monkeypatch.delenv("RAYREC_ALLOW_OPEN", raising=False)
    started = []
    monkeypatch.setattr(serve, "init_ray", lambda *a, **k: started.append(1))
    assert serve.main(["--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert started == [] and "refusing to serve on 0.0.0.0 without an API token" in capsys.readouterr().err
