"""The HTTP API: FastAPI routes over a `SearchService`, with the guards every route shares.

`create_api` builds the app at replica start (Serve's late-bound ingress), so that the
settings (API key, CORS origins, limits) are plain constructor arguments and nothing
happens at import. Every error body is `{"error": ..., "detail": ...}`:
malformed JSON -> 400, missing/wrong API key -> 401, unknown video or media -> 404,
body too large -> 413, invalid fields -> 422, store or encoder down -> 503.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.media import (
    MEDIA_ROUTE,
    MEDIA_TYPES,
    MediaResolver,
    media_signing_key,
    valid_media_signature,
)
from serve.metrics import RequestMetrics
from serve.schemas import (
    MAX_TOP_K,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
    SimilarResponse,
    VideoInfo,
)
from serve.search import BadQueryError, SearchService, UnavailableError

logger = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
FRAME_PATH = re.compile(r"/videos/[^/]+/frames/[0-9]+\.jpg")  # signed like /media
PROTECTED_PREFIXES = ("/search", "/videos/", f"{MEDIA_ROUTE}/")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed JSON",
        401: "missing or wrong X-API-Key",
        413: "request body too large",
        422: "invalid request fields",
        503: "vector store or text encoder unavailable",
    }.items()
}


@dataclass
class ApiOptions:
    """HTTP-level settings of the API."""

    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 65536
    metrics: RequestMetrics = field(default_factory=RequestMetrics)


def error_body(message: str, detail: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": message, "detail": detail}


def _json_error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status, headers=headers or None)


class GuardMiddleware:
    """API key on the protected routes and a cap on the request body (pure ASGI).

    A media URL needs the key header or a valid signature (`expires` and `sig` query
    parameters, made by `MediaResolver`): the key itself is never accepted in a URL.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        max_body_bytes: int,
        media: MediaResolver | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.media_key = media.signing_key if media is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self._refuse(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, self._capped(receive), send)

    def _refuse(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        length = headers.get("content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return _json_error(413, f"request body larger than {self.max_body_bytes} bytes")
        path = app_path(scope)
        if self.api_key and scope["method"] != "OPTIONS" and _protected(path):
            given = headers.get(API_KEY_HEADER, b"").decode("latin-1")
            signable = path.startswith(MEDIA_ROUTE) or FRAME_PATH.fullmatch(path) is not None
            if not given and signable and self.media_key is not None:
                expires, sig = _query_param(scope, "expires"), _query_param(scope, "sig")
                if valid_media_signature(self.media_key, path, expires, sig):
                    return None
                return _json_error(401, "missing, expired or wrong media URL signature")
            if not secrets.compare_digest(given.encode(), self.api_key.encode()):
                return _json_error(401, "missing or wrong X-API-Key header")
        return None

    def _capped(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        return capped


def app_path(scope: Scope) -> str:
    """The request path inside the app: ASGI's `path` includes `root_path` (Serve's route
    prefix), which routing strips; the guards must see what the router sees."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return str(path)


def _protected(path: str) -> bool:
    return path == "/search" or path.startswith(PROTECTED_PREFIXES)


def _query_param(scope: Scope, name: str) -> str:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name, [])
    return values[0] if values else ""


class MetricsMiddleware:
    """Request count and latency by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            latency_ms = (time.perf_counter() - start) * 1000.0
            self.metrics.record(template, scope["method"], status, latency_ms)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONResponse(error_body("malformed JSON body", errors), status_code=400)
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
        for e in errors[:5]
    )
    return JSONResponse(error_body(f"invalid request: {summary}", errors), status_code=422)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(BadQueryError)
    async def _bad_query(_: Request, exc: BadQueryError) -> JSONResponse:
        return _json_error(422, f"invalid request: {exc}")

    @app.exception_handler(UnavailableError)
    async def _unavailable(_: Request, exc: UnavailableError) -> JSONResponse:
        return _json_error(503, str(exc), **{"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return _json_error(500, "internal server error")


def _page(base: str) -> str:
    html = resources.files("serve").joinpath("static/index.html").read_text(encoding="utf-8")
    # json.dumps + escaping '<' keeps the root path a plain JS string literal.
    return html.replace("__ADACLIP_BASE__", json.dumps(base).replace("<", "\\u003c"))


def create_api(service: SearchService, options: ApiOptions | None = None) -> FastAPI:
    """The FastAPI app of the search server.

    Args:
        service: answers searches and lookups.
        options: API key, CORS origins, body limit and metrics.
    """
    options = options or ApiOptions()
    app = FastAPI(
        title="AdaCLIP video search",
        version="1.0",
        description="Text-to-video retrieval over a Qdrant index built by `adaclip index`.",
    )
    _install_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_page(request.scope.get("root_path", "")))

    @app.post("/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        """Videos that best match a text query, best first."""
        return await service.search(body, request.scope.get("root_path", ""))

    @app.get("/videos/{video_id}", response_model=VideoInfo, responses=ERRORS)
    async def video(
        request: Request, video_id: str = Path(min_length=1, max_length=512)
    ) -> VideoInfo:
        """One indexed video by its `video_id` (or point id)."""
        info = await service.video(video_id, request.scope.get("root_path", ""))
        if info is None:
            raise HTTPException(404, f"no video {video_id!r}")
        return info

    @app.get("/videos/{video_id}/similar", response_model=SimilarResponse, responses=ERRORS)
    async def similar(
        request: Request,
        video_id: str = Path(min_length=1, max_length=512),
        top_k: int = Query(10, ge=1, le=MAX_TOP_K),
    ) -> SimilarResponse:
        """Videos nearest to an indexed video (by its stored vector), never the video itself."""
        found = await service.similar(video_id, top_k, request.scope.get("root_path", ""))
        if found is None:
            raise HTTPException(404, f"no video {video_id!r}")
        return found

    @app.get(
        "/videos/{video_id}/frames/{index}.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
    )
    async def frame(
        video_id: str = Path(min_length=1, max_length=512),
        index: int = Path(ge=0, le=1023),
    ) -> Response:
        """JPEG thumbnail of a local video's kept frame `index` (at its `frame_ts`), decoded
        by seeking and cached; the same media root confinement and auth as `/media`."""
        data = await service.frame_jpeg(video_id, index)
        if data is None:
            raise HTTPException(404, "no such frame")
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.api_route(f"{MEDIA_ROUTE}/{{path:path}}", methods=["GET", "HEAD"], include_in_schema=False)
    async def media(path: str) -> FileResponse:
        file = service.media.local_file(path)
        if file is None:
            raise HTTPException(404, "no such media")
        return FileResponse(file, media_type=MEDIA_TYPES.get(file.suffix.lower()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: ERRORS[503]})
    async def readyz() -> dict[str, Any]:
        """The store is reachable and the model is loaded (readiness)."""
        return await service.readiness()

    if options.api_key and service.media.signing_key is None:
        service.media.signing_key = media_signing_key(options.api_key)
    app.add_middleware(
        GuardMiddleware,  # type: ignore[arg-type]
        api_key=options.api_key,
        max_body_bytes=options.max_body_bytes,
        media=service.media,
    )
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,  # type: ignore[arg-type]
            allow_origins=options.cors_origins,
            allow_methods=["GET", "POST", "HEAD", "OPTIONS"],
            allow_headers=["Content-Type", "X-API-Key"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=options.metrics)  # type: ignore[arg-type]
    return app
