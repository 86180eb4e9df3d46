"""`adaclip serve` (start the search server locally) and `adaclip search` (query it)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.settings import default_collection, parse_settings
from serve.settings import OpenApiRefused, SearchSettings, ServeSettings, check_auth


def start_server(settings: ServeSettings) -> str:
    """Start the search app on this machine's Ray (local cluster if none); return its URL."""
    import ray
    from ray import serve

    from serve.app import app_from_settings

    check_auth(settings, settings.host)
    if not ray.is_initialized():
        if settings.direct_ingress and not settings.ray_address:
            # read by the controller and the replicas of the local cluster started here
            os.environ[DIRECT_INGRESS_ENV] = "1"
        ray.init(address=settings.ray_address, log_to_driver=False)
    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.port,
            "request_timeout_s": settings.request_timeout_s,
        }
    )
    serve.run(
        app_from_settings(settings),
        name=settings.app_name,
        route_prefix=settings.route_prefix,
        blocking=False,
    )
    # Serve keeps the HTTP options of its first start in this cluster: report where its
    # proxy really listens, and say so when that differs from what was asked for.
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None, "serve.start() connected no client"
    http = client.http_config
    try:
        check_auth(settings, http.host)  # Serve already ran elsewhere: that host counts
    except OpenApiRefused:
        serve.delete(settings.app_name)
        raise
    if (http.host, http.port) != (settings.host, settings.port):
        print(
            f"note: Serve already runs in this Ray cluster on {http.host}:{http.port}; "
            f"--host/--port apply only to a fresh cluster",
            flush=True,
        )
    prefix = settings.route_prefix.rstrip("/")
    if settings.direct_ingress:
        direct = direct_ingress_url(client, settings.app_name, settings.host)
        if direct is not None:
            return f"{direct}{prefix}"
        print(
            f"note: direct ingress is not enabled in this Ray cluster (start it with "
            f"{DIRECT_INGRESS_ENV}=1); serving through the Serve proxy",
            flush=True,
        )
    return f"http://{http.host}:{http.port}{prefix}"


# Ray Serve's (experimental) direct ingress: ingress replicas run their own HTTP server.
DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"


def direct_ingress_url(
    client: Any, app_name: str, host: str, timeout_s: float = 120.0
) -> str | None:
    """``http://host:port`` of the app's ingress replica when direct ingress is on, else None.

    Asks the Serve controller for the app's HTTP target group (Ray 2.60's
    ``get_target_groups``); without direct ingress its targets are the proxies. The
    replica binds the HTTP ``host`` option, so that is the address to call unless it
    listens on every interface (then: the replica's node address).
    """
    import ray

    controller = client._controller
    deadline = time.monotonic() + timeout_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        http = [g for g in groups if str(g.protocol).upper().endswith("HTTP")]
        targets = [t for g in http for t in g.targets]
        if targets and all(t.name.startswith("SERVE_PROXY") for t in targets):
            return None  # direct ingress is off: the targets are the proxies
        replicas = [t for t in targets if not t.name.startswith("SERVE_PROXY")]
        if replicas:
            address = replicas[0].ip if host in ("0.0.0.0", "::", "") else host
            return f"http://{address}:{replicas[0].port}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"no running ingress replica of {app_name!r} after {timeout_s:.0f}s")
        time.sleep(0.5)


def wait_ready(url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> None:
    """Poll ``url``/readyz until it answers 200.

    Raises:
        TimeoutError: not ready within ``timeout_s``, with the last answer or error.
    """
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/readyz", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}: {err.read()[:200]!r}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.5)
    raise TimeoutError(f"the search API at {url} was not ready after {timeout_s:.0f}s: {last}")


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`adaclip serve --checkpoint DIR [--collection NAME] [--qdrant-path DIR | --qdrant-url URL]
    [--host H] [--port P]`: run the search server until interrupted."""
    settings = parse_settings(ServeSettings, argv, "adaclip serve")
    from ray import serve

    try:
        check_auth(settings, settings.host)
    except OpenApiRefused as err:
        print(f"adaclip serve: {err}", file=sys.stderr)
        return 2
    url = start_server(settings)
    if not settings.api_key:
        print(
            f"note: no --api-key: the search API is open to anyone who can reach "
            f"{settings.host}:{settings.port}",
            flush=True,
        )
    print(f"AdaCLIP search on {url}/  (API docs {url}/docs); Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.delete(settings.app_name)
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def search_main(argv: Sequence[str] | None = None) -> int:
    """`adaclip search TEXT | --image FILE | --like VIDEO_ID [--url URL | --local ...]`:
    print the hits."""
    from pydantic import ValidationError

    try:
        settings = parse_settings(SearchSettings, argv, "adaclip search")
    except ValidationError as err:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
        print(f"adaclip search: {reasons}", file=sys.stderr)
        return 2
    try:
        body = search_body(settings)
        if settings.local:
            data = search_local(settings, body)
        elif settings.like:
            data = similar_http(settings, settings.like)
        else:
            data = search_http(settings, body)
    except SearchFailed as err:
        print(f"adaclip search: {err}", file=sys.stderr)
        return 1
    if settings.json_output:
        print(json.dumps(data, indent=2))
    else:
        print(format_results(data))
    return 0


class SearchFailed(RuntimeError):
    """The search could not be answered (message for the user)."""


# An uploaded image above this many bytes is re-encoded smaller: the server's default body
# limit (--max-body-bytes 65536) holds its base64 (4/3 larger) with room for the JSON.
MAX_IMAGE_UPLOAD_BYTES = 45_000


def search_body(settings: SearchSettings) -> dict[str, Any]:
    """The `POST /search` body of a text or image query (unused for --like)."""
    body: dict[str, Any] = {"top_k": settings.top_k}
    if settings.image:
        body["image"] = base64.b64encode(upload_image(settings.image)).decode()
    else:
        body["query"] = settings.query or ""
    if settings.uri_prefix:
        body["filter"] = {"uri_prefix": settings.uri_prefix}
    if settings.rerank != "auto":
        body["rerank"] = settings.rerank == "on"
    return body


def upload_image(path: str, max_bytes: int = MAX_IMAGE_UPLOAD_BYTES) -> bytes:
    """The image file's bytes; a large one re-encoded as a JPEG of at most 448 px a side
    (the server crops the centre square and scales it to CLIP's input size anyway).

    Raises:
        SearchFailed: the file cannot be read, or is no image.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SearchFailed(f"cannot read {path}: {err}") from err
    if len(data) <= max_bytes:
        return data
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise SearchFailed(f"{path} is not a readable image: {err}") from err
    side = 448
    while True:
        small = image.copy()
        small.thumbnail((side, side))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=90)
        if out.tell() <= max_bytes or side <= 64:
            return out.getvalue()
        side //= 2


def _http_json(
    settings: SearchSettings, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if settings.api_key:
        headers["X-API-Key"] = settings.api_key
    request = urllib.request.Request(
        settings.url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", err.reason)
        except (ValueError, AttributeError):
            message = err.reason
        raise SearchFailed(f"server answered {err.code}: {message}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise SearchFailed(f"cannot reach {settings.url}: {err}") from err


def search_http(settings: SearchSettings, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to `<url>/search` and return the decoded response."""
    return _http_json(settings, "/search", body)


def similar_http(settings: SearchSettings, video_id: str) -> dict[str, Any]:
    """`GET <url>/videos/{video_id}/similar?top_k=N`, decoded."""
    path = f"/videos/{urllib.parse.quote(video_id, safe='')}/similar?top_k={settings.top_k}"
    return _http_json(settings, path)


def search_local(settings: SearchSettings, body: dict[str, Any]) -> dict[str, Any]:
    """Answer `body` (or --like) in process: encode with the checkpoint, query the store."""
    if not settings.checkpoint:
        raise SearchFailed("--local needs --checkpoint")
    from pipelines.store import open_store
    from serve.encoder import InlineEncoder
    from serve.media import MediaResolver
    from serve.schemas import SearchRequest
    from serve.search import BadQueryError, SearchService, UnavailableError

    encoder = InlineEncoder(settings.checkpoint, s3_endpoint_url=settings.s3_endpoint_url)
    service = SearchService(
        encoder=encoder,
        open_store=lambda: open_store(
            qdrant_path=settings.qdrant_path,
            qdrant_url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
        ),
        collection=settings.collection or default_collection(encoder.info.model_id),
        media=MediaResolver(None, settings.s3_endpoint_url),
    )
    try:
        if settings.like:
            found = asyncio.run(service.similar(settings.like, settings.top_k))
            if found is None:
                raise SearchFailed(f"no video {settings.like!r} in the index")
            return found.model_dump()
        response = asyncio.run(service.search(SearchRequest.model_validate(body)))
    except (UnavailableError, BadQueryError) as err:
        raise SearchFailed(str(err)) from err
    finally:
        service.close()
        encoder.close()
    return response.model_dump()


def format_results(data: dict[str, Any]) -> str:
    """One line per hit: rank, score, video id, moment, URI."""
    lines = []
    for rank, hit in enumerate(data.get("results", []), start=1):
        moment = hit.get("best_moment_s")
        at = f"@{moment:7.2f}s" if moment is not None else " " * 9
        lines.append(f"{rank:3d}  {hit['score']:.4f}  {hit['video_id']:<20} {at}  {hit['uri']}")
    lines.append(
        f"{len(data.get('results', []))} results in {data.get('took_ms', 0.0):.1f} ms "
        f"(model {data.get('model_id')})"
    )
    return "\n".join(lines)
