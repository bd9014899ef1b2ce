"""Every malformed request is a 4xx in the documented ``{error, field}`` shape, never a 5xx: the
HTTP app over the real write path (store guard, real-time path, a SQLite store in tmp), in process."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from realtime_doubles import asgi_request as call
from realtime_doubles import item_rows, toy_movies

from rayrec import secrets
from rayrec.realtime import Realtime, RealtimeConfig
from rayrec.retrieval.catalog import ItemCatalog
from rayrec.serving import create_app
from rayrec.serving.api import MAX_EVENTS, MAX_JSON_DEPTH
from rayrec.serving.security import PAGE_CSP, SecurityConfig
from rayrec.serving.testing import EventsBackend, FaultyStore
from rayrec.store import open_store
from rayrec.store.base import mask_url

JSON = {"content-type": "application/json"}


@pytest.fixture
def backend(tmp_path) -> EventsBackend:
    movies = toy_movies()
    store = open_store(f"sqlite://{tmp_path}/store.db")
    store.load("item", item_rows(movies), key="movieId")
    rt = Realtime(store, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(item_rows(movies)))
    yield EventsBackend(rt)
    store.close()




def movie(backend: EventsBackend) -> int:
    return int(backend.rt.catalog.movie_ids[0])


def rating(backend: EventsBackend, **over: Any) -> dict[str, Any]:
    return {"kind": "rating", "user_id": 7, "movie_id": movie(backend), "value": 4.5, **over}


def assert_shape(r: httpx.Response, status: int, field: str | None = "__any__") -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"] and "field" in body, body
    assert "Traceback" not in r.text
    if field != "__any__":
        assert body["field"] == field, body
    return body


def test_deep_nesting_and_huge_integers_are_400_not_500(backend: EventsBackend) -> None:
    app = create_app(backend, security=SecurityConfig())
    deep = b"[" * 5000 + b"]" * 5000  # under the 16 KiB limit: json.loads alone raises RecursionError
    for body in (deep, b'{"a":' * 2500 + b"1" + b"}" * 2500, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)):
        assert_shape(call(app, "POST", "/events", content=body, headers=JSON), 400, "body")
    huge = json.dumps(rating(backend)).replace('"user_id": 7', '"user_id": ' + "9" * 5000).encode()
    assert_shape(call(app, "POST", "/events", content=huge, headers=JSON), 400, "body")
    for const in (b"NaN", b"Infinity", b"-Infinity"):
        body = json.dumps(rating(backend)).replace("4.5", "@").encode().replace(b"@", const)
        assert_shape(call(app, "POST", "/events", content=body, headers=JSON), 400, "body")
    # a lone surrogate cannot be stored: refused as malformed rather than failing in the store
    item = b'{"title": "\\ud800", "genres": []}'
    assert_shape(call(app, "POST", "/items", content=item, headers=JSON), 400, "body")
    # nesting inside strings is not nesting
    ok = json.dumps({**rating(backend), "timestamp": None}).encode()
    assert call(app, "POST", "/events", content=ok.replace(b'"kind"', b'"kind"'), headers=JSON).status_code == 200


@pytest.mark.parametrize("value", ["4.5", True, False, [4.5], {"v": 4.5}, "", None])
def test_a_rating_value_must_be_a_json_number(backend: EventsBackend, value: Any) -> None:
    app = create_app(backend, security=SecurityConfig())
    r = call(app, "POST", "/events", json=rating(backend, value=value))
    assert_shape(r, 422, "value")
    assert backend.rt.store.log_length("events") == 0


@pytest.mark.parametrize("over", [{"user_id": "7"}, {"user_id": 7.0}, {"user_id": True}, {"movie_id": "1"},
                                  {"timestamp": "1600000000"}, {"timestamp": 1.6e9}, {"kind": 1}, {"extra": 1}])  # fmt: skip
def test_ids_and_timestamps_are_strict_integers(backend: EventsBackend, over: dict[str, Any]) -> None:
    r = call(create_app(backend, security=SecurityConfig()), "POST", "/events", json=rating(backend, **over))
    assert_shape(r, 422, next(iter(over)))


def test_a_post_must_declare_json(backend: EventsBackend) -> None:
    """A cross-site form or a text/plain fetch (no CORS preflight) cannot write."""
    app = create_app(backend, security=SecurityConfig())
    body = json.dumps(rating(backend)).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": ctype} if ctype else {}
        assert_shape(call(app, "POST", "/events", content=body, headers=headers), 415, "body")
        assert_shape(call(app, "POST", "/items", content=b'{"title": "x"}', headers=headers), 415, "body")
    assert backend.rt.store.log_length("events") == 0
    ok = call(app, "POST", "/events", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_events_per_request_are_capped(backend: EventsBackend) -> None:
    app = create_app(backend, security=SecurityConfig())
    many = [rating(backend, user_id=1 + i) for i in range(MAX_EVENTS + 1)]
    assert_shape(call(app, "POST", "/events", json=many), 413, "body")
    assert backend.rt.store.log_length("events") == 0
    assert call(app, "POST", "/events", json=many[:MAX_EVENTS]).status_code == 200


def test_unknown_routes_and_methods_keep_the_shape(backend: EventsBackend) -> None:
    app = create_app(backend, security=SecurityConfig())
    assert_shape(call(app, "GET", "/nope"), 404, None)
    assert_shape(call(app, "DELETE", "/events"), 405, None)
    assert_shape(call(app, "GET", "/recommend?user_id=" + "9" * 5000), 422, "user_id")
    assert_shape(call(app, "GET", "/recommend?user_id=1&k=1e3"), 422, "k")


def test_security_headers_and_host_allow_list(backend: EventsBackend) -> None:
    app = create_app(backend, security=SecurityConfig(allowed_hosts=("127.0.0.1", "localhost", "*.example.org")))
    page = call(app, "GET", "/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == PAGE_CSP and "frame-ancestors 'none'" in PAGE_CSP
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert call(app, "GET", "/healthz").headers["x-content-type-options"] == "nosniff"
    for host in ("localhost:8000", "api.example.org", "127.0.0.1:1"):
        assert call(app, "GET", "/healthz", headers={"host": host}).status_code == 200, host
    for host in ("evil.test", "127.0.0.1.evil.test", "example.org.evil.test", ""):
        r = call(app, "POST", "/events", json=rating(backend), headers={"host": host})
        assert_shape(r, 400, "host")
        assert r.headers["x-content-type-options"] == "nosniff"
    assert backend.rt.store.log_length("events") == 0


def test_errors_name_no_store_address_and_logs_mask_secrets(tmp_path, caplog) -> None:
    """A 503 says what happened and what to do; the store's URL and path stay in the (masked) log."""
    movies = toy_movies()
    inner = open_store(f"sqlite://{tmp_path}/secret-dir/store.db")
    inner.load("item", item_rows(movies), key="movieId")
    down = FaultyStore(inner, "fail")
    down.url = "redis://app:hunter2secret@10.1.2.3:6379/0?password=hunter3secret"
    rt = Realtime(down, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(item_rows(movies)))  # type: ignore[arg-type]
    app = create_app(EventsBackend(rt), security=SecurityConfig())
    with caplog.at_level(logging.WARNING):
        r = call(app, "POST", "/events", json={"kind": "click", "user_id": 1, "movie_id": int(movies["movieId"][0])})
    body = assert_shape(r, 503, None)
    assert "10.1.2.3" not in r.text and "secret" not in r.text and str(tmp_path) not in r.text, body
    assert "hunter" not in caplog.text and "10.1.2.3" in caplog.text  # the log has the place, not the password
    inner.close()


def test_mask_removes_passwords_tokens_and_registered_secrets() -> None:
    secrets.register("tok-0123456789abcdef")
    cases = {
        "redis://u:pw1@h:1/0": "pw1",
        "rediss://:pw2@h/0": "pw2",
        "redis://h:1/0?password=pw3&prefix=x": "pw3",
        "connect(host=h, password='pw4')": "pw4",
        "Authorization: Bearer abcdefgh123": "abcdefgh123",
        "got token tok-0123456789abcdef from env": "tok-0123456789abcdef",
        "s3://bucket/x?X-Amz-Credential=a&secret_key=pw5": "pw5",
    }
    for text, secret in cases.items():
        assert secret not in secrets.mask(text), text
    assert "prefix=x" in secrets.mask("redis://h:1/0?password=pw3&prefix=x")
    prose = "Token authentication is enabled for this cluster"
    assert secrets.mask(prose) == prose
    assert mask_url("redis://h:1/0?password=pw6") == "redis://h:1/0?password=***"
    assert mask_url("redis://u:pw7@h:1/0") == "redis://u:***@h:1/0"
