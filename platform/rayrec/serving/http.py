"""The HTTP API as a FastAPI app over a :class:`Backend`, with the web page at ``/``.

The same app runs inside the Serve ingress (``__serve_build_asgi_app__``) and in-process under any
ASGI server or ``httpx.ASGITransport`` (tests, the compute-floor benchmark). Errors a caller can cause
get a 4xx whose ``error`` names the field: 422 for a bad value (types are strict: ``"4.5"`` or ``true``
is not a rating), 400 for malformed JSON (including nesting deeper than ``MAX_JSON_DEPTH`` and integers of
more than ``MAX_INT_DIGITS`` digits, refused before they can exhaust the parser), 404 for an unknown
movie, 413 for an oversized body or more than ``MAX_EVENTS`` events, 415 for a POST body that is not
declared ``application/json`` (so a cross-site form or ``text/plain`` post cannot write without a CORS
preflight). 401/403 when a token is configured and missing or wrong (:mod:`rayrec.serving.security`).
No answer carries a traceback, a store URL or a file path: the details go to the log, secrets masked.
An unknown user is not an error: it gets cold-start results.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayrec import secrets

from rayrec.realtime import AddedItem, ColdContext, Event, EventAck, NewItem
from rayrec.serving.api import (
    ID_MAX,
    K_DEFAULT,
    K_MAX,
    MAX_BODY_BYTES,
    MAX_EVENTS,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    ErrorBody,
    Health,
    Movie,
    Recommendation,
    SimilarMovies,
    UserProfile,
)
from rayrec.serving.events import InvalidEvent, ServiceUnavailable
from rayrec.serving.security import SecurityConfig, SecurityMiddleware, Unauthorized

__all__ = ["Backend", "create_app", "BodyLimit", "static_dir"]

log = logging.getLogger(__name__)

DESCRIPTION = """
Movie recommendations: multi-path recall (embedding ANN, item-to-item, genres, popularity) →
Embedding+MLP ranker → rerank (MMR diversity, freshness, popularity, business rules).

* `GET /recommend?user_id=&k=`: the user's list, best first, each item with its recall paths and a reason.
  Unknown users get cold-start results (popular at this hour; `genres=Comedy,Drama` and `hour=21`
  steer them). `degraded: true` means a dependency failed and a simpler
  answer (popularity, or the recall order) was given.
* `GET /similar?movie_id=&k=`: movies like this one.
* `GET /users/{user_id}`, `GET /movies/{movie_id}`: what the online store holds.
* `POST /events`: a rating or a click (or a list of them); the user's features, history and vector
  change at once, so the next `/recommend` reflects it.
* `POST /items`: a new movie, recommendable and searchable at once.
* `GET /healthz`: liveness of this replica (a shared store outage reports `degraded`, not a failure).
"""


class Backend(Protocol):
    """What the HTTP layer needs; :class:`rayrec.serving.service.RecommenderService` implements it."""

    async def recommend(self, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation: ...

    async def similar(self, movie_id: int, k: int) -> SimilarMovies | None: ...

    async def user(self, user_id: int) -> UserProfile | None: ...

    async def movie(self, movie_id: int) -> Movie | None: ...

    async def event(self, payload: Any) -> EventAck | list[EventAck]: ...

    async def add_item(self, payload: Any) -> AddedItem: ...

    async def health(self) -> Health: ...


def static_dir() -> str:
    return str(resources.files("rayrec.serving") / "static")


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, by Content-Length up front
    or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"error": f"request body larger than {self.limit} bytes", "field": "body"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("query", "path", "body")]
    return ".".join(parts) or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors()]
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return JSONResponse(
            {"error": f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}", "field": "body"},
            status_code=400,
        )
    name = _field(first.get("loc", ()))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    named = re.match(r"^([A-Za-z_]+): ", msg)
    if named and name == "body":  # a model-level check names its field in the message
        name = named.group(1)
    text = msg if msg.startswith(f"{name}:") else f"{name}: {msg}"
    detail = [{"field": _field(e.get("loc", ())), "message": e.get("msg")} for e in errors]
    return JSONResponse({"error": text, "field": name, "detail": detail}, status_code=422)


def create_app(backend: Backend, *, title: str = "rayrec", security: SecurityConfig | None = None) -> FastAPI:
    """The FastAPI app of the recommender, answering from ``backend``. ``security``: the token and
    Host allow-list (None: from the environment, see :mod:`rayrec.serving.security`)."""
    security = security if security is not None else SecurityConfig.from_env()
    secrets.install()
    app = FastAPI(title=title, description=DESCRIPTION, version="1")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SecurityMiddleware, config=security)  # outermost: Host check and headers on every answer
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "malformed JSON"},
        422: {"model": ErrorBody, "description": "a parameter is out of range or of the wrong type"},
    }
    if security.token is not None:
        errors[401] = {"model": ErrorBody, "description": "no bearer token (Authorization: Bearer <token>)"}
        errors[403] = {"model": ErrorBody, "description": "the bearer token is not valid"}

    async def authorized(request: Request) -> None:
        security.authorize(request.headers.get("authorization"))

    auth = [Depends(authorized)]

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(Unauthorized)
    async def _on_unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": "authorization"}, status_code=exc.status,
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        text = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"error": text, "field": None}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)  # masked by rayrec.secrets
        return JSONResponse({"error": "internal error (logged on the server)", "field": None}, status_code=500)

    page = static_dir()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(f"{page}/index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str = Path(pattern=r"^[A-Za-z0-9_.-]+$")) -> Response:
        allowed = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in allowed:
            return JSONResponse({"error": f"no static file {name!r}", "field": "name"}, status_code=404)
        return FileResponse(f"{page}/{name}", media_type=allowed[name])

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return await backend.health()

    @app.get("/recommend", response_model=Recommendation, responses=errors, tags=["recommend"], dependencies=auth)
    async def recommend(
        user_id: int = Query(..., ge=1, le=ID_MAX, description="the user; unknown users get cold-start results"),
        k: int = Query(K_DEFAULT, ge=1, le=K_MAX, description=f"how many items (1 to {K_MAX})"),
        genres: str | None = Query(None, max_length=400, description="a new user's favourite genres, comma-separated"),
        hour: int | None = Query(None, ge=0, le=23, description="a new user's local hour of day (cold start)"),
    ) -> Response:
        context = None
        if genres is not None or hour is not None:
            try:
                context = ColdContext(genres=genres or [], hour=hour)  # type: ignore[arg-type]
            except ValidationError as e:
                raise RequestValidationError([{**err, "loc": ("query", *err["loc"])} for err in e.errors()]) from None
        # serialised once here; FastAPI would otherwise validate the model again against response_model
        return _json_response(await backend.recommend(user_id, k, context))

    @app.get("/similar", response_model=SimilarMovies, responses={**errors, 404: {"model": ErrorBody}}, tags=["recommend"])
    async def similar(
        movie_id: int = Query(..., ge=1, le=ID_MAX), k: int = Query(K_DEFAULT, ge=1, le=K_MAX)
    ) -> Response:
        out = await backend.similar(movie_id, k)
        if out is None:
            return _not_found("movie_id", f"movie {movie_id} is not in the catalog")
        return _json_response(out)

    @app.get("/users/{user_id}", response_model=UserProfile, responses={**errors, 404: {"model": ErrorBody}}, tags=["data"],
             dependencies=auth)  # fmt: skip
    async def user(user_id: int = Path(..., ge=1, le=ID_MAX)) -> UserProfile | JSONResponse:
        out = await backend.user(user_id)
        if out is None:
            return _not_found("user_id", f"user {user_id} is unknown (no features and no events yet)")
        return out

    @app.get("/movies/{movie_id}", response_model=Movie, responses={**errors, 404: {"model": ErrorBody}}, tags=["data"])
    async def movie(movie_id: int = Path(..., ge=1, le=ID_MAX)) -> Movie | JSONResponse:
        out = await backend.movie(movie_id)
        if out is None:
            return _not_found("movie_id", f"movie {movie_id} is not in the catalog")
        return out

    def _body_schema(model: type[Any], many: bool) -> dict[str, Any]:
        one = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema = {"anyOf": [one, {"type": "array", "items": one}]} if many else one
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    write_errors: dict[int | str, dict[str, Any]] = {
        **errors, 404: {"model": ErrorBody, "description": "the event names a movie not in the catalog"},
        413: {"model": ErrorBody, "description": f"body over {MAX_BODY_BYTES} bytes, or over {MAX_EVENTS} events"},
        415: {"model": ErrorBody, "description": "the body is not declared application/json"},
        503: {"model": ErrorBody, "description": "the online store is down (nothing was recorded) or did not confirm the write in time (it may still be applied): retry"},
    }  # fmt: skip

    @app.post("/events", response_model=EventAck | list[EventAck], responses=write_errors, tags=["events"],
              openapi_extra=_body_schema(Event, many=True), dependencies=auth)  # fmt: skip
    async def events(request: Request) -> Any:
        payload = await _json(request)
        if isinstance(payload, list) and len(payload) > MAX_EVENTS:
            return JSONResponse({"error": f"body: {len(payload)} events in one request, at most {MAX_EVENTS}: "
                                          "send them in several requests", "field": "body"}, status_code=413)  # fmt: skip
        return await backend.event(payload)

    @app.post("/items", response_model=AddedItem, responses=write_errors, tags=["events"],
              openapi_extra=_body_schema(NewItem, many=False), dependencies=auth)  # fmt: skip
    async def items(request: Request) -> Any:
        return await backend.add_item(await _json(request))

    @app.exception_handler(_BadJSON)
    async def _on_bad_json(_: Request, exc: _BadJSON) -> JSONResponse:
        return JSONResponse({"error": f"malformed JSON body: {exc}", "field": "body"}, status_code=400)

    @app.exception_handler(_NotJSON)
    async def _on_not_json(_: Request, exc: _NotJSON) -> JSONResponse:
        return JSONResponse({"error": f"body: {exc}", "field": "body"}, status_code=415)

    @app.exception_handler(InvalidEvent)
    async def _on_invalid(_: Request, exc: InvalidEvent) -> JSONResponse:
        first = exc.errors[0] if exc.errors else {"loc": [], "msg": "invalid"}
        name = _field(first["loc"])
        return JSONResponse({"error": f"{name}: {first['msg']}", "field": name,
                             "detail": [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors]},
                            status_code=exc.status)  # fmt: skip

    @app.exception_handler(ServiceUnavailable)
    async def _on_unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": None}, status_code=503, headers={"Retry-After": "1"})

    return app


class _BadJSON(ValueError):
    pass


class _NotJSON(ValueError):
    pass


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def _too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (strings skipped), checked before parsing:
    ``json.loads`` recurses once per level and would raise RecursionError a few thousand levels down."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for c in _BRACKET.findall(_STRING.sub(b"", body)):
        depth += 1 if c in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadJSON(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not JSON (numbers must be finite)")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _json(request: Request) -> Any:
    """The request's JSON body: the size limit applies while it is read (413), then its declared type
    (415), its depth (400) and its syntax (400, integers of bounded length, finite numbers only)."""
    body = await request.body()
    if not _is_json(request.headers.get("content-type")):
        raise _NotJSON("send the body as JSON with the header Content-Type: application/json")
    if not body.strip():
        raise _BadJSON("the body is empty; send a JSON object")
    if _too_deep(body):
        raise _BadJSON(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        out = json.loads(body, parse_int=_int, parse_constant=_constant)
        if b"\\u" in body:  # escapes may hide lone surrogates, which no store can encode
            json.dumps(out, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeError) as e:
        raise _BadJSON(str(e)) from None
    except (RecursionError, ValueError) as e:  # a backstop: the checks above should catch these first
        raise _BadJSON(type(e).__name__) from None
    return out


def _json_response(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _not_found(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=404)


