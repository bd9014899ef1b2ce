"""Property-based fuzzing, 0 5xx: the request models take any JSON value and either accept it or
raise a ValidationError (nothing else); the HTTP app answers any body, content type and query with a
status below 500 in the ``{error, field}`` shape; and schemathesis, driving every operation of
``/openapi.json`` with schema-valid and schema-violating requests, finds no server error. The app is
the real write path over SQLite (``EventsBackend``), in process. Bounded by the example counts below."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from pydantic import ValidationError
from realtime_doubles import asgi_request as send
from realtime_doubles import item_rows, toy_movies

from rayrec.realtime import Event, EventError, NewItem, Realtime, RealtimeConfig, parse_events
from rayrec.retrieval.catalog import ItemCatalog
from rayrec.serving import create_app
from rayrec.serving.security import SecurityConfig
from rayrec.serving.testing import EventsBackend
from rayrec.store import open_store

#: what each fuzz test tried and how many answers were 5xx, printed at the end of the module
TALLY: Counter[str] = Counter()

# JSON-like values, including the edges that broke things before: huge integers, non-finite floats,
# lone surrogates, booleans where numbers go, numeric strings, deep-ish nesting
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.text(st.characters(codec=None, categories=["Cs", "Lu", "Nd"]), max_size=5),
    st.sampled_from(["4.5", "1", "true", "rating", "click", "", " ", "-1", "1e309"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["kind", "user_id", "movie_id", "value", "timestamp", "event_id"]


@st.composite
def event_like(draw: Any) -> dict[str, Any]:
    """A valid event with some fields replaced by arbitrary values, dropped, or added."""
    base: dict[str, Any] = {"kind": draw(st.sampled_from(["rating", "click"])), "user_id": draw(st.integers(1, 50)),
                            "movie_id": 3, "value": draw(st.sampled_from([0.5, 4.5, 5.0, None]))}  # fmt: skip
    for name in draw(st.lists(st.sampled_from(FIELDS + ["extra"]), max_size=3, unique=True)):
        if draw(st.booleans()):
            base[name] = draw(values)
        else:
            base.pop(name, None)
    return base


@settings(max_examples=400, deadline=None)
@given(st.one_of(event_like(), values))
def test_the_event_model_accepts_or_refuses_cleanly(payload: Any) -> None:
    TALLY["model: Event"] += 1
    try:
        e = Event.model_validate(payload)
    except ValidationError:
        return
    assert isinstance(e.user_id, int) and 0 < e.user_id < 2**63 and isinstance(e.key, str)
    assert e.value is None or isinstance(e.value, float)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(event_like(), max_size=4), values))
def test_parse_events_raises_only_event_errors(payload: Any) -> None:
    TALLY["model: parse_events"] += 1
    try:
        parse_events(payload)
    except EventError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"title": values | st.text(max_size=40), "genres": values | st.lists(st.text(max_size=10), max_size=4),
                                           "year": values | st.integers(1800, 2200), "x": values}))  # fmt: skip
def test_the_item_model_accepts_or_refuses_cleanly(payload: dict[str, Any]) -> None:
    TALLY["model: NewItem"] += 1
    try:
        NewItem.model_validate(payload)
    except ValidationError:
        pass


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    movies = toy_movies()
    store = open_store(f"sqlite://{tmp}/store.db")
    store.load("item", item_rows(movies), key="movieId")
    rt = Realtime(store, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(item_rows(movies)))
    yield create_app(EventsBackend(rt), security=SecurityConfig())
    store.close()




def check(r: httpx.Response, what: str) -> None:
    TALLY[what] += 1
    if r.status_code >= 500:
        TALLY[f"{what} 5xx"] += 1
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400 and r.status_code != 405:
        body = r.json()
        assert isinstance(body.get("error"), str) and "field" in body, body


def raw_json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    event_like().map(raw_json), st.lists(event_like(), max_size=6).map(raw_json), values.map(raw_json),
    st.binary(max_size=300), st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 2000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(20, 6000).map(lambda n: b'{"kind":"click","user_id":' + b"9" * n + b',"movie_id":3}'),
)  # fmt: skip
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
                                 "application/vnd.api+json", "", "multipart/form-data; boundary=x", "application/json; charset=latin-1"])  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/events", "/items"]), body=bodies, ctype=content_types)
def test_any_post_body_is_answered_below_500(app: Any, path: str, body: bytes, ctype: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    check(send(app, "POST", path, content=body, headers=headers), "http: POST bodies")


queries = st.dictionaries(st.sampled_from(["user_id", "movie_id", "k", "genres", "hour", "x"]),
                          st.one_of(st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=30), st.integers().map(str), st.just("9" * 5000), st.floats().map(str)), max_size=4)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/recommend", "/similar", "/users/{}", "/movies/{}", "/healthz", "/static/{}", "/nope"]),
       query=queries, segment=st.text(st.characters(categories=["L", "N", "P", "S"], exclude_characters="/?#%\\"), min_size=1, max_size=30))  # fmt: skip
def test_any_query_and_path_is_answered_below_500(app: Any, path: str, query: dict[str, str], segment: str) -> None:
    check(send(app, "GET", path.format(segment), params=query), "http: GET queries and paths")


def test_schemathesis_finds_no_server_error(app: Any) -> None:
    """Every operation of the app's OpenAPI schema, with requests that follow the schema and requests
    that break it (schemathesis' positive and negative modes)."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/events", "/items", "/users/{user_id}"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                r = case.call()
                TALLY["schemathesis: all operations"] += 1
                if r.status_code >= 500:
                    TALLY["schemathesis: all operations 5xx"] += 1
                assert r.status_code < 500, (case.method, case.path, case.query, case.body, r.status_code, r.text[:300])

            try:
                run()
            except Unsatisfiable:  # nothing of this operation can break its schema (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, op.path


def test_zz_print_the_tally() -> None:
    """The counts behind the report's table (runs last in this module)."""
    print("\nfuzzing tally:", json.dumps(dict(sorted(TALLY.items()))))
    assert not {k: n for k, n in TALLY.items() if k.endswith("5xx")}
