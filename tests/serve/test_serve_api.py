"""The search API without Ray Serve: FastAPI app + SearchService + real encoder and store.

The HTTP layer is driven in process (Starlette's TestClient); the same app runs behind
Ray Serve in test_serve_http.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from serve_fixtures import IndexedVideos, frame_png

from pipelines.store import open_store
from serve.api import ApiOptions, create_api
from serve.cli import MAX_IMAGE_UPLOAD_BYTES, upload_image
from serve.encoder import (
    ModelInfo,
    QueryCache,
    QueryEncoder,
    QueryVector,
    UnknownModelError,
    normalize_query,
)
from serve.media import MediaResolver, resolve_media_path
from serve.search import SearchService
from serve.settings import ServeSettings

# qdrant-client warns from a thread when its version probe of the down server fails.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")
REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-123"

# (body, expected status): every refused request is a 4xx with an "error" message.
BAD_REQUESTS: list[tuple[str, int]] = [
    ("{bad json", 400),
    ('{"query": "a", ', 400),
    ("", 422),
    ("null", 422),
    ("[]", 422),
    ('"a red circle"', 422),
    ("{}", 422),
    ('{"query": ""}', 422),
    ('{"query": "   \\n\\t "}', 422),
    ('{"query": "' + "x" * 1001 + '"}', 422),
    ('{"query": 5}', 422),
    ('{"query": ["a"]}', 422),
    ('{"query": {"text": "a"}}', 422),
    ('{"query": null}', 422),
    ('{"query": true}', 422),
    ('{"query": "\\ud800"}', 422),
    ('{"query": "a", "top_k": 0}', 422),
    ('{"query": "a", "top_k": 101}', 422),
    ('{"query": "a", "top_k": -3}', 422),
    ('{"query": "a", "top_k": "5"}', 422),
    ('{"query": "a", "top_k": 2.5}', 422),
    ('{"query": "a", "top_k": true}', 422),
    ('{"query": "a", "top_k": null}', 422),
    ('{"query": "a", "rerank": "yes"}', 422),
    ('{"query": "a", "unknown": 1}', 422),
    ('{"query": "a", "filter": {"uri": "x"}}', 422),
    ('{"query": "a", "filter": {"uri_prefix": 7}}', 422),
    ('{"query": "a", "filter": "s3://b/"}', 422),
]

# Odd but valid queries: never a 500.
ODD_QUERIES = [
    "x" * 1000,
    "日本語のクエリ" * 100,
    "emoji 🎬🔴⚪ circle",
    "<script>alert(1)</script>",
    "nul \x00 byte and \x07 bell",
    "'; DROP TABLE videos; --",
    "a",
]


@pytest.fixture(scope="module")
def encoder(indexed_videos: IndexedVideos) -> QueryEncoder:
    return QueryEncoder(str(indexed_videos.checkpoint))


@pytest.fixture(scope="module")
def store_copy(indexed_videos: IndexedVideos, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the index (an embedded store has one owner at a time)."""
    dest = tmp_path_factory.mktemp("api_store") / "qdrant"
    shutil.copytree(indexed_videos.qdrant_path, dest)
    return dest


class DirectEncoder:
    """One loaded model as the service's encoder (`info` may claim another model_id)."""

    def __init__(self, encoder: QueryEncoder, info: ModelInfo | None = None) -> None:
        self.encoder = encoder
        self.info = info or encoder.info

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        return QueryVector(self.info.model_id, self.encoder.encode([text])[0])

    async def load(self, model_id: str) -> ModelInfo:
        raise UnknownModelError(f"model {model_id} is not loaded")

    async def embed_image(self, image: bytes, model_id: str | None = None) -> QueryVector:
        return QueryVector(self.info.model_id, self.encoder.encode_image(image))


def make_service(
    encoder: QueryEncoder, indexed: IndexedVideos, store_path: Path, **kwargs: Any
) -> SearchService:
    return SearchService(
        encoder=DirectEncoder(encoder, kwargs.pop("info", None)),
        open_store=kwargs.pop("open_store", lambda: open_store(qdrant_path=str(store_path))),
        collection=indexed.collection,
        media=MediaResolver(indexed.media_root),
        **kwargs,
    )


@pytest.fixture(scope="module")
def service(
    encoder: QueryEncoder, indexed_videos: IndexedVideos, store_copy: Path
) -> Iterator[SearchService]:
    svc = make_service(encoder, indexed_videos, store_copy)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: SearchService) -> TestClient:
    return TestClient(create_api(service, ApiOptions(max_body_bytes=4096)))


def test_search_equals_direct_store_search(
    client: TestClient, service: SearchService, encoder: QueryEncoder
) -> None:
    client.post("/search", json={"query": "warm"})  # opens the store
    assert service._binding is not None
    store = service._binding.store
    for query, rerank in [("a red circle moving left", False), ("blue square going up", True)]:
        r = client.post("/search", json={"query": query, "top_k": 4, "rerank": rerank})
        assert r.status_code == 200, r.text
        body = r.json()
        direct = store.search(
            encoder.encode([query])[0],
            top_k=4,
            rerank=rerank,
            rerank_candidates=service.rerank_candidates,
            agg_temperature=encoder.info.agg_temperature,
        )
        assert [h["video_id"] for h in body["results"]] == [h.video_id for h in direct]
        for got, want in zip(body["results"], direct, strict=True):
            assert got["score"] == pytest.approx(want.score, abs=1e-6)
            assert got["uri"] == want.uri and got["frame_ts"] == want.frame_ts
            assert got["best_moment_s"] == want.best_moment_s
            assert (got["best_moment_s"] is not None) == rerank
        assert body["model_id"] == encoder.info.model_id and body["took_ms"] > 0
        assert body["reranked"] == rerank and body["collection"] == store.collection.name


@pytest.mark.parametrize(("body", "status"), BAD_REQUESTS)
def test_bad_requests_are_4xx_with_message(client: TestClient, body: str, status: int) -> None:
    r = client.post("/search", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


@pytest.mark.parametrize("query", ODD_QUERIES)
def test_odd_but_valid_queries(client: TestClient, query: str) -> None:
    r = client.post("/search", json={"query": query, "top_k": 100, "rerank": True})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 6


def test_other_bad_inputs(client: TestClient) -> None:
    assert client.post("/search", content=b"x" * 5000).status_code == 413
    r = client.post("/search", content="query=a", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    assert client.get("/search").status_code == 405
    assert client.get("/videos/" + "v" * 600).status_code == 422
    r = client.get("/videos/no-such-video")
    assert r.status_code == 404 and "no-such-video" in r.json()["error"]
    assert client.get("/nope").status_code == 404
    assert client.post("/search", content=b"\xff\xfe{}").status_code in (400, 422)


def test_filter_and_video_lookup(client: TestClient, indexed_videos: IndexedVideos) -> None:
    one = indexed_videos.videos["video00001"]
    body = {"query": "circle", "filter": {"uri_prefix": str(one)}, "top_k": 10}
    hits = client.post("/search", json=body).json()["results"]
    assert [h["video_id"] for h in hits] == ["video00001"]
    prefix = str(one.parent) + "/"
    assert (
        len(
            client.post("/search", json={**body, "filter": {"uri_prefix": prefix}}).json()[
                "results"
            ]
        )
        == 6
    )
    none = {**body, "filter": {"uri_prefix": "s3://elsewhere/"}}
    assert client.post("/search", json=none).json()["results"] == []
    info = client.get("/videos/video00001").json()
    assert info["uri"] == str(one) and info["media_url"] == "/media/synth/video00001.mp4"
    assert len(info["frame_ts"]) == len(info["frame_weights"]) > 0
    media = client.get(info["media_url"])
    assert media.status_code == 200 and media.content == one.read_bytes()
    assert media.headers["content-type"] == "video/mp4"
    part = client.get(info["media_url"], headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == one.read_bytes()[:10]


def test_health_ready_docs_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["videos"] == 6
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/videos/{video_id}", "/healthz", "/readyz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert "__ADACLIP_BASE__" not in page.text and 'const BASE = "";' in page.text


def test_api_key(service: SearchService) -> None:
    guarded = TestClient(create_api(service, ApiOptions(api_key=KEY)))
    body = {"query": "a red circle"}
    assert guarded.post("/search", json=body).status_code == 401
    assert guarded.post("/search", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert guarded.post("/search", content="{bad").status_code == 401  # key checked first
    assert guarded.post("/search", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert guarded.get("/videos/video00001").status_code == 401
    assert guarded.get("/videos/video00001", headers={"X-API-Key": KEY}).status_code == 200
    assert guarded.get("/media/synth/video00001.mp4").status_code == 401
    # the key is never accepted in a URL; media links come signed (HMAC over path + expiry)
    assert guarded.get(f"/media/synth/video00001.mp4?api_key={KEY}").status_code == 401
    hit = guarded.post("/search", json=body, headers={"X-API-Key": KEY}).json()["results"][0]
    signed = hit["media_url"]
    assert KEY not in signed and "sig=" in signed and "expires=" in signed
    assert guarded.get(signed).status_code == 200
    path, query = signed.split("?")
    other = (
        "/media/synth/video00002.mp4" if "video00001" not in path else "/media/synth/video00003.mp4"
    )
    assert guarded.get(f"{other}?{query}").status_code == 401  # signature of another path
    assert guarded.get(signed.replace("sig=", "sig=0")).status_code == 401
    from serve.media import media_signature, media_signing_key

    key = media_signing_key(KEY)
    assert key is not None
    past = 1_000_000
    expired = f"{path}?expires={past}&sig={media_signature(key, path, past)}"
    assert guarded.get(expired).status_code == 401
    for open_path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert guarded.get(open_path).status_code == 200, open_path


def test_kept_frame_thumbnails(service: SearchService, indexed_videos: IndexedVideos) -> None:
    """`GET /videos/{id}/frames/{i}.jpg`: the kept frame at `frame_ts[i]` decoded by seeking
    (what the model saw: the centre square), cached, signed like media URLs."""
    import io

    from PIL import Image

    from adaclip.thumbnails import decode_frame_at

    guarded = TestClient(create_api(service, ApiOptions(api_key=KEY)))
    auth = {"X-API-Key": KEY}
    body = {"query": "a red circle", "top_k": 3, "moments": True}
    hit = guarded.post("/search", json=body, headers=auth).json()["results"][0]
    urls, ts, vid = hit["frame_urls"], hit["frame_ts"], hit["video_id"]
    assert len(urls) == len(ts) > 1 and hit["best_moment_s"] in ts
    for i, url in enumerate(urls):
        assert url.startswith(f"/videos/{vid}/frames/{i}.jpg?expires=") and KEY not in url
    for i in (0, len(urls) - 1):
        r = guarded.get(urls[i])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert "max-age" in r.headers["cache-control"]
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
        want = decode_frame_at(indexed_videos.videos[vid], ts[i], got.shape[0])
        assert got.shape == want.shape and np.abs(got - want).mean() < 6
        assert guarded.get(urls[i]).content == r.content  # from the cache
    assert any(key[2] == 0 for key in service._thumbnails)
    unsigned = urls[0].split("?")[0]
    assert guarded.get(unsigned).status_code == 401
    assert guarded.get(unsigned, headers=auth).status_code == 200
    assert guarded.get(f"/videos/{vid}/frames/1.jpg?{urls[0].split('?')[1]}").status_code == 401
    assert guarded.get(f"/videos/{vid}/frames/{len(ts)}.jpg", headers=auth).status_code == 404
    assert guarded.get("/videos/nope/frames/0.jpg", headers=auth).status_code == 404
    outside = MediaResolver(indexed_videos.media_root / "elsewhere")
    assert outside.frame_urls(hit["uri"], vid, len(ts)) == []  # not under the media root


def test_cors(service: SearchService) -> None:
    app = create_api(service, ApiOptions(api_key=KEY, cors_origins=["https://ok.example"]))
    c = TestClient(app)
    pre = c.options(
        "/search",
        headers={
            "Origin": "https://ok.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://ok.example"
    r = c.post("/search", json={"query": "a"}, headers={"Origin": "https://ok.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://ok.example"
    bad = c.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers
    plain = TestClient(create_api(service)).get("/healthz", headers={"Origin": "https://x.example"})
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize(
    "path",
    [
        "/media/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/media/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/media/synth/..%2F..%2Fqdrant",
        "/media/%2Fetc%2Fpasswd",
        "/media//etc/passwd",
        "/media/synth/video00001.mp4%00.txt",
        "/media/synth/..%5C..%5Cetc%5Cpasswd",
        "/media/synth/train.json",
        "/media/synth",
        "/media/",
        "/media/synth/escape.mp4",
    ],
)
def test_media_confined_to_root(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"root:" not in r.content


def test_store_unreachable_is_503(encoder: QueryEncoder, indexed_videos: IndexedVideos) -> None:
    from pipelines.store.server import ServerVideoStore

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = make_service(
        encoder,
        indexed_videos,
        Path("unused"),
        open_store=lambda: ServerVideoStore(url=f"http://127.0.0.1:{port}", timeout=2),
    )
    c = TestClient(create_api(down))
    r = c.post("/search", json={"query": "a red circle"})
    assert r.status_code == 503 and "store unavailable" in r.json()["error"]
    assert c.get("/videos/video00001").status_code == 503
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200
    assert c.post("/search", json={"query": ""}).status_code == 422  # still validated first


def test_wrong_model_or_dead_encoder_is_503(
    encoder: QueryEncoder, indexed_videos: IndexedVideos, tmp_path: Path
) -> None:
    shutil.copytree(indexed_videos.qdrant_path, tmp_path / "q")
    other = ModelInfo(**{**encoder.info.to_dict(), "model_id": "0123456789abcdef"})
    mismatch = make_service(encoder, indexed_videos, tmp_path / "q", info=other)
    r = TestClient(create_api(mismatch)).post("/search", json={"query": "a"})
    assert r.status_code == 503 and "0123456789abcdef" in r.json()["error"]
    mismatch.close()

    class Broken(DirectEncoder):
        async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
            raise RuntimeError("replica died")

    dead = make_service(encoder, indexed_videos, tmp_path / "q")
    dead.encoder = Broken(encoder)
    r = TestClient(create_api(dead)).post("/search", json={"query": "a"})
    assert r.status_code == 503 and "encoder" in r.json()["error"]
    dead.close()


def test_resolve_media_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "v.mp4").write_bytes(b"v")
    (root / "a" / "notes.txt").write_text("n")
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (root / "a" / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    r = root.resolve()
    assert resolve_media_path(r, "a/v.mp4") == r / "a" / "v.mp4"
    for bad in ["../secret.mp4", "a/../../secret.mp4", "/etc/passwd", "a/link.mp4", "a/notes.txt",
                "a", "", "a\\v.mp4", "a/v.mp4\x00", "a/missing.mp4"]:  # fmt: skip
        assert resolve_media_path(r, bad) is None, bad


def test_media_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "videos"
    (root / "x y").mkdir(parents=True)
    video = root / "x y" / "clip#1.mp4"
    video.write_bytes(b"v")
    media = MediaResolver(root, s3_endpoint_url="http://127.0.0.1:9", presign_expires_s=60)
    assert media.media_url(str(video)) == "/media/x%20y/clip%231.mp4"
    assert media.media_url(video.as_uri(), base="/app") == "/app/media/x%20y/clip%231.mp4"
    assert media.media_url(str(tmp_path / "elsewhere.mp4")) is None
    assert media.media_url("relative/clip.mp4") is None
    assert media.media_url("https://cdn.example/v.mp4") == "https://cdn.example/v.mp4"
    assert MediaResolver(None).media_url(str(video)) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = media.media_url("s3://bucket/clips/a b.mp4")
    assert url is not None and url.startswith("http://127.0.0.1:9/bucket/clips/a%20b.mp4?")
    assert "Signature=" in url and ("X-Amz-Expires=60" in url or "Expires=" in url)
    assert media.media_url("s3://") is None  # unpresignable: the hit stays, without media


def test_query_cache_lru() -> None:
    cache = QueryCache(2)
    a, b, c = (np.full(2, i, dtype=np.float32) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    off = QueryCache(0)
    off.put("a", a)
    assert off.get("a") is None and len(off) == 0
    assert normalize_query("  a   red\tcircle \n") == "a red circle"


def test_encoder_is_exact_and_batch_independent(encoder: QueryEncoder) -> None:
    texts = ["a red circle moving left", "cyan cross", "a video of a white triangle going up"]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert encoder.info.dim == together.shape[1]


def test_settings_and_builder(
    indexed_videos: IndexedVideos, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from serve.app import build_app, encoder_options, ingress_options

    monkeypatch.setenv("ADACLIP_CORS_ORIGINS", "https://a.example, https://b.example")
    s = ServeSettings(checkpoint=str(indexed_videos.checkpoint), port="9000")  # type: ignore[arg-type]
    assert s.cors_origins == ["https://a.example", "https://b.example"] and s.port == 9000
    with pytest.raises(ValidationError):
        ServeSettings()  # type: ignore[call-arg]  # checkpoint is required
    with pytest.raises(ValidationError):
        build_app({"checkpoint": "x", "no_such_setting": 1})
    checkpoint = str(indexed_videos.checkpoint)
    assert build_app({"checkpoint": checkpoint, "allow_unauthenticated": True}) is not None
    assert build_app({"checkpoint": checkpoint, "api_key": "k"}) is not None
    enc = encoder_options(
        ServeSettings(checkpoint="c", min_replicas=1, max_replicas=3, use_gpu=True)
    )
    assert enc["autoscaling_config"]["max_replicas"] == 3
    assert enc["ray_actor_options"]["num_gpus"] == 0.25  # the text tower: a GPU's fraction
    assert enc["autoscaling_config"]["target_ongoing_requests"] == 16  # one full batch
    sized = ServeSettings(checkpoint="c", use_gpu=True, encoder_gpus=0.5, max_batch_size=8)
    assert encoder_options(sized)["ray_actor_options"]["num_gpus"] == 0.5
    assert encoder_options(sized)["autoscaling_config"]["target_ongoing_requests"] == 8
    explicit = ServeSettings(checkpoint="c", target_ongoing_requests=3)
    assert encoder_options(explicit)["autoscaling_config"]["target_ongoing_requests"] == 3
    assert ingress_options(ServeSettings(checkpoint="c"))["num_replicas"] == 1  # embedded
    remote = ingress_options(ServeSettings(checkpoint="c", qdrant_url="http://q:6333"))
    assert remote["autoscaling_config"]["max_replicas"] == 2


def test_an_open_api_is_deliberate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No API key: refused unless --allow-unauthenticated, or the HTTP proxy listens on a
    loopback address only (adaclip serve's default --host 127.0.0.1)."""
    import serve.app
    from serve.app import build_app
    from serve.cli import serve_main
    from serve.settings import OpenApiRefused, check_auth, is_loopback

    monkeypatch.delenv("ADACLIP_API_KEY", raising=False)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.7", "example.com"))
    open_ = ServeSettings(checkpoint="c")
    for host in ("0.0.0.0", "::", "192.168.1.4", None):
        with pytest.raises(OpenApiRefused, match="--allow-unauthenticated"):
            check_auth(open_, host)
    check_auth(open_, "127.0.0.1")
    check_auth(ServeSettings(checkpoint="c", api_key="k"), "0.0.0.0")
    check_auth(ServeSettings(checkpoint="c", allow_unauthenticated=True), "0.0.0.0")
    # serve run / serve deploy: Serve's own HTTP host decides (unknown: refused)
    for host, refused in ((None, True), ("0.0.0.0", True), ("127.0.0.1", False)):
        monkeypatch.setattr(serve.app, "serve_http_host", lambda host=host: host)
        if refused:
            with pytest.raises(OpenApiRefused):
                build_app({"checkpoint": "c"})
        else:
            assert build_app({"checkpoint": "c"}) is not None
    # adaclip serve on every interface without a key: a clear refusal before anything starts
    assert serve_main(["--checkpoint", "c", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve an open search API on 0.0.0.0" in err and "--api-key" in err


def test_where_queries_are_encoded() -> None:
    """The ingress encodes unless a GPU encoder serves scaled-out ingresses (Qdrant server)."""
    from serve.app import IngressConfig, app_from_settings, encodes_in_ingress, ingress_options

    def deployments(s: ServeSettings) -> set[str]:
        ingress = app_from_settings(s)._bound_deployment
        encoder = ingress.init_args[0]  # the encoder's Application, or None
        return {ingress.name} | ({encoder._bound_deployment.name} if encoder else set())

    server, gpu = {"qdrant_url": "http://q:6333"}, {"use_gpu": True}
    cases = [({}, True), (gpu, True), (server, True), ({**server, **gpu}, False)]
    for extra, inline in cases:
        s = ServeSettings(checkpoint="c", encoder_cpus=1.5, ingress_cpus=0.25, **extra)
        assert encodes_in_ingress(s) is inline, extra
        config = IngressConfig.from_settings(s)
        assert (config.checkpoint is not None) is inline and config.cache_size == s.cache_size
        actor = ingress_options(s)["ray_actor_options"]
        assert actor["num_cpus"] == (1.75 if inline else 0.25), extra
        assert actor.get("num_gpus", 0) == (0.25 if inline and s.use_gpu else 0), extra
        want = {"SearchIngress"} if inline else {"SearchIngress", "TextEncoder"}
        assert deployments(s) == want, extra
    forced = ServeSettings(checkpoint="c", encode_in_ingress=False)
    assert not encodes_in_ingress(forced)
    assert deployments(forced) == {"SearchIngress", "TextEncoder"}
    assert encodes_in_ingress(
        ServeSettings(checkpoint="c", encode_in_ingress=True, **server, **gpu)
    )


def test_config_yaml_is_a_valid_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(doc)
    app = config.applications[0]
    assert app.import_path == "serve.app:build_app"
    ServeSettings(**app.args)  # the builder accepts these args


def test_query_encoder_holds_the_text_tower_only(indexed_videos: IndexedVideos) -> None:
    """The encoder replica's model is CLIP's text tower (no image tower, policy or
    aggregator): the same embeddings as the full model, in fewer bytes; the image tower is
    loaded by the first image query only."""
    import torch

    from adaclip.checkpoint import load_checkpoint
    from adaclip.text_tower import TEXT_PREFIXES, load_text_tower, parameter_bytes

    full = load_checkpoint(indexed_videos.checkpoint)
    encoder = QueryEncoder(str(indexed_videos.checkpoint))
    names = [f"clip.{n}" for n, _ in encoder.model.clip.named_parameters()]
    assert names and all(n.startswith(TEXT_PREFIXES) for n in names)
    assert not any(n.startswith(("policy.", "aggregator.", "clip.visual.")) for n in names)
    queries = ["a red circle moving left", "x", "the blue square slides upwards, quickly"]
    with torch.no_grad():
        want = full.encode_text(queries).numpy()
    np.testing.assert_allclose(encoder.encode(queries), want, atol=1e-6)
    text_bytes, full_bytes = parameter_bytes(encoder.model), parameter_bytes(full)
    assert text_bytes < 0.6 * full_bytes, (text_bytes, full_bytes)
    assert (
        encoder.info.model_id
        == full.model_id
        == load_text_tower(indexed_videos.checkpoint).model_id
    )
    assert encoder._image_model is None
    encoder.encode_image(frame_png(indexed_videos.videos["video00001"]))
    assert encoder._image_model is not None


def test_search_cli_local(
    indexed_videos: IndexedVideos, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adaclip.cli import main

    shutil.copytree(indexed_videos.qdrant_path, tmp_path / "q")
    args = ["search", "a red circle", "--local", "--checkpoint", str(indexed_videos.checkpoint)]
    args += ["--qdrant-path", str(tmp_path / "q"), "--top-k", "3", "--rerank", "on"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 results")
    assert "video0000" in lines[0] and "@" in lines[0]
    local = ["--local", "--checkpoint", str(indexed_videos.checkpoint)]
    local += ["--qdrant-path", str(tmp_path / "q"), "--json-output"]
    assert main(["search", "--like", "video00002", "--top-k", "3", *local]) == 0
    similar = json.loads(capsys.readouterr().out)
    assert similar["video_id"] == "video00002" and len(similar["results"]) == 3
    assert "video00002" not in [hit["video_id"] for hit in similar["results"]]
    image = tmp_path / "frame.png"
    image.write_bytes(frame_png(indexed_videos.videos["video00003"], size=600))
    assert image.stat().st_size > MAX_IMAGE_UPLOAD_BYTES  # re-encoded smaller for the upload
    assert len(upload_image(str(image))) <= MAX_IMAGE_UPLOAD_BYTES
    assert main(["search", "--image", str(image), "--top-k", "6", *local]) == 0
    by_image = json.loads(capsys.readouterr().out)["results"]
    assert len(by_image) == 6 and all(hit["best_moment_s"] is None for hit in by_image)
    assert main(["search", "--image", str(tmp_path / "missing.png"), *local]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["search", "some text", "--like", "video00002"]) == 2
    assert "exactly one of TEXT, --image FILE and --like" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["search", "x", "--url", f"http://127.0.0.1:{port}", "--timeout-s", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_cli_lists_serve_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from adaclip.cli import SUBCOMMANDS, main

    assert SUBCOMMANDS["serve"][:2] == ("serve.cli", "serve_main")
    assert SUBCOMMANDS["search"][:2] == ("serve.cli", "search_main")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "search" in out


def test_importing_the_app_has_no_side_effects() -> None:
    import subprocess
    import sys

    code = (
        "import ray, serve.app, serve.api, serve.cli; assert not ray.is_initialized(); print('ok')"
    )
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_search_service_runs_without_fastapi(service: SearchService) -> None:
    from serve.schemas import SearchRequest

    response = asyncio.run(service.search(SearchRequest(query="green cross", top_k=2)))
    assert len(response.results) == 2


def test_route_prefix_keeps_guards_and_urls(service: SearchService) -> None:
    """Behind a route prefix (Serve's root_path, path still full) nothing changes."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    inner = create_api(service, ApiOptions(api_key=KEY))
    c = TestClient(Starlette(routes=[Mount("/adaclip", app=inner)]))
    body = {"query": "a red circle", "top_k": 2}
    assert c.post("/adaclip/search", json=body).status_code == 401
    assert c.get("/adaclip/media/synth/video00001.mp4").status_code == 401
    r = c.post("/adaclip/search", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200
    assert r.json()["results"][0]["media_url"].startswith("/adaclip/media/synth/")
    assert 'const BASE = "/adaclip";' in c.get("/adaclip/").text
    assert c.get("/adaclip/healthz").status_code == 200


def test_moments_keep_the_models_order(client: TestClient, encoder: QueryEncoder) -> None:
    """`moments` adds each hit's best frame (argmax of cos(q, f_k)) and changes nothing else;
    an MLP/mean model is not re-ranked unless asked."""
    body = {"query": "a red circle moving left", "top_k": 5}
    plain = client.post("/search", json=body).json()
    with_moments = client.post("/search", json={**body, "moments": True}).json()
    assert not plain["reranked"] and not with_moments["reranked"]
    assert [(h["video_id"], h["score"]) for h in with_moments["results"]] == [
        (h["video_id"], h["score"]) for h in plain["results"]
    ]
    assert all(h["best_moment_s"] is None for h in plain["results"])
    for hit in with_moments["results"]:
        assert hit["best_moment_s"] in hit["frame_ts"]


def test_search_by_image_and_similar_videos(
    client: TestClient, indexed_videos: IndexedVideos, encoder: QueryEncoder
) -> None:
    """A frame of an indexed video (PNG, base64) finds that video; `similar` never returns
    the video itself; a bad image is a 422."""
    import base64
    import io

    from PIL import Image

    from adaclip.decode import decode_candidates

    first = 0
    for video_id, path in indexed_videos.videos.items():
        decoded = decode_candidates(path, 8, size=None)
        png = io.BytesIO()
        Image.fromarray(decoded.frames[3]).save(png, format="PNG")
        body = {"image": base64.b64encode(png.getvalue()).decode(), "top_k": 6}
        r = client.post("/search", json=body)
        assert r.status_code == 200, r.text
        assert not r.json()["reranked"] and r.json()["model_id"] == encoder.info.model_id
        first += r.json()["results"][0]["video_id"] == video_id

        r = client.get(f"/videos/{video_id}/similar", params={"top_k": 3})
        assert r.status_code == 200, r.text
        ids = [h["video_id"] for h in r.json()["results"]]
        assert len(ids) == 3 and video_id not in ids and r.json()["video_id"] == video_id
    print(f"image query: own video first for {first}/{len(indexed_videos.videos)}")
    assert first > len(indexed_videos.videos) / 2
    assert client.get("/videos/nope/similar").status_code == 404
    assert client.get("/videos/video00001/similar", params={"top_k": 0}).status_code == 422
    not_image = base64.b64encode(b"plain text, no image").decode()
    for bad in ({"image": not_image}, {"image": "%%%"}, {"query": "a", "image": not_image}):
        r = client.post("/search", json=bad)
        assert r.status_code == 422 and r.json()["error"], (bad, r.text)
