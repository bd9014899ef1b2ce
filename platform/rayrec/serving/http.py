"""The HTTP API as a FastAPI app over a :class:`Backend`, with the web page at ``/``.

The same app runs inside the Serve ingress (``__serve_build_asgi_app__``) and in-process under any
ASGI server or ``httpx.ASGITransport`` (tests, the compute-floor benchmark). Errors a caller can cause
get a 4xx whose ``error`` names the field: 422 for a bad value, 400 for malformed JSON, 404 for an
unknown movie, 413 for an oversized body. An unknown user is not an error: it gets cold-start results.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayrec.realtime import AddedItem, ColdContext, Event, EventAck, NewItem
from rayrec.serving.api import (
    ID_MAX,
    K_DEFAULT,
    K_MAX,
    MAX_BODY_BYTES,
    ErrorBody,
    Health,
    Movie,
    Recommendation,
    SimilarMovies,
    UserProfile,
)
from rayrec.serving.events import InvalidEvent, ServiceUnavailable

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


def create_app(backend: Backend, *, title: str = "rayrec") -> FastAPI:
    """The FastAPI app of the recommender, answering from ``backend``."""
    app = FastAPI(title=title, description=DESCRIPTION, version="1")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "malformed JSON"},
        422: {"model": ErrorBody, "description": "a parameter is out of range or of the wrong type"},
    }

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

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

    @app.get("/recommend", response_model=Recommendation, responses=errors, tags=["recommend"])
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

    @app.get("/users/{user_id}", response_model=UserProfile, responses={**errors, 404: {"model": ErrorBody}}, tags=["data"])
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
        413: {"model": ErrorBody, "description": f"body over {MAX_BODY_BYTES} bytes"},
        503: {"model": ErrorBody, "description": "the online store is down (nothing was recorded) or did not confirm the write in time (it may still be applied): retry"},
    }  # fmt: skip

    @app.post("/events", response_model=EventAck | list[EventAck], responses=write_errors, tags=["events"],
              openapi_extra=_body_schema(Event, many=True))  # fmt: skip
    async def events(request: Request) -> Any:
        return await backend.event(await _json(request))

    @app.post("/items", response_model=AddedItem, responses=write_errors, tags=["events"],
              openapi_extra=_body_schema(NewItem, many=False))  # fmt: skip
    async def items(request: Request) -> Any:
        return await backend.add_item(await _json(request))

    @app.exception_handler(_BadJSON)
    async def _on_bad_json(_: Request, exc: _BadJSON) -> JSONResponse:
        return JSONResponse({"error": f"malformed JSON body: {exc}", "field": "body"}, status_code=400)

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


async def _json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        raise _BadJSON("the body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _BadJSON(str(e)) from None


def _json_response(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _not_found(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=404)


