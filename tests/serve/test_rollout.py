"""Safe model rollout: aliases on both store backends, immutable published checkpoints, the
ingress refusing mismatched embeddings, and a client querying throughout an alias switch."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fixtures import IndexedVideos, index_videos, write_tiny_checkpoint

from pipelines.store import EdgeVideoStore, ServerVideoStore, VideoRecord, VideoStore
from serve.api import ApiOptions, create_api
from serve.encoder import InlineEncoder, QueryVector
from serve.media import MediaResolver
from serve.metrics import RequestMetrics
from serve.rollout import PublishError, alias_main, publish_checkpoint
from serve.search import SearchService

QUERIES = ["a red circle moving left", "blue square going up", "green cross", "white triangle"]


def _record(uri: str, model_id: str, dim: int = 8) -> VideoRecord:
    rng = np.random.default_rng(zlib.crc32(uri.encode()))  # the same vectors every run
    return VideoRecord(
        uri=uri, video_id=Path(uri).stem, etag="e", size_bytes=1, duration_s=1.0,
        video_vector=rng.normal(size=dim), frame_vectors=rng.normal(size=(2, dim)),
        frame_ts=[0.0, 0.5], frame_weights=[0.5, 0.5], model_id=model_id,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_alias_switches_atomically_on_both_backends(backend: str, tmp_path: Path) -> None:
    def fresh() -> VideoStore:
        if backend == "embedded":
            return EdgeVideoStore(tmp_path / "q")
        return ServerVideoStore(path=str(tmp_path / "local"))

    for name, model in [("coll_a", "model_a"), ("coll_b", "model_b")]:
        store = fresh()
        store.ensure_collection(name, 8, 2, model)
        store.upsert([_record(f"/v/{name}.mp4", model)])
        store.close()
    store = fresh()
    try:
        assert store.aliases() == {} and store.resolve_alias("videos") == "videos"
        assert store.set_alias("videos", "coll_a") is None
        info = store.open_collection("videos")
        assert (info.name, info.model_id) == ("coll_a", "model_a")
        assert store.set_alias("videos", "coll_b") == "coll_a"
        assert store.aliases() == {"videos": "coll_b"}
        info = store.open_collection("videos")
        assert (info.name, info.model_id) == ("coll_b", "model_b")
        assert [h.video_id for h in store.search(np.ones(8), top_k=5)] == ["coll_b"]
        with pytest.raises(LookupError):
            store.set_alias("videos", "missing")
        with pytest.raises(LookupError):  # an alias cannot point at an alias
            store.set_alias("other", "videos")
        with pytest.raises(ValueError):
            store.set_alias("coll_a", "coll_b")
        assert store.aliases() == {"videos": "coll_b"}  # refused switches changed nothing
    finally:
        store.close()
    if backend == "embedded":  # the CLI on the same folder
        argv = ["videos", "coll_a", "--qdrant-path", str(tmp_path / "q")]
        assert alias_main(argv) == 0
        assert EdgeVideoStore(tmp_path / "q").aliases() == {"videos": "coll_a"}
        assert alias_main(["videos", "nope", "--qdrant-path", str(tmp_path / "q")]) == 1


def test_publish_is_immutable_and_idempotent(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a", seed=0)
    b = write_tiny_checkpoint(tmp_path / "b", seed=1)
    models = tmp_path / "models"
    uri = publish_checkpoint(str(tmp_path / "a"), str(models))
    assert uri == f"{models}/{a}"
    assert sorted(p.name for p in Path(uri).iterdir()) == ["config.json", "model.safetensors"]
    assert publish_checkpoint(str(tmp_path / "a"), str(models)) == uri  # again: a no-op
    # files of another model under a's prefix (someone overwrote it): refused, not replaced
    shutil.rmtree(uri)
    shutil.copytree(tmp_path / "b", uri)
    with pytest.raises(PublishError, match="immutable"):
        publish_checkpoint(str(tmp_path / "a"), str(models))
    assert b != a and not list(models.glob(".*partial*"))


class WrongModel:
    """An encoder whose embeddings carry another model_id than the one asked for."""

    def __init__(self, inner: InlineEncoder) -> None:
        self.inner = inner
        self.info = inner.info

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        qv = await self.inner.embed(text, model_id)
        return QueryVector("ffffffffffffffff", qv.vector)

    async def load(self, model_id: str) -> Any:
        return await self.inner.load(model_id)


def _expected(encoder: InlineEncoder, store_path: Path, collection: str) -> dict[str, list]:
    store = EdgeVideoStore(store_path)
    store.open_collection(collection)
    try:
        out = {}
        for q in QUERIES:
            vector = asyncio.run(encoder.embed(q)).vector
            out[q] = [(h.video_id, round(h.score, 5)) for h in store.search(vector, top_k=4)]
        return out
    finally:
        store.close()


def test_queries_throughout_an_alias_switch(indexed_videos: IndexedVideos, tmp_path: Path) -> None:
    """A bounded client loop through a switch from model A's collection to model B's:
    no failed request, each answer exactly one model's, only B's once B answered."""
    qdrant = tmp_path / "qdrant"
    shutil.copytree(indexed_videos.qdrant_path, qdrant)
    model_a = indexed_videos.model_id
    model_b = write_tiny_checkpoint(tmp_path / "ckpt_b", seed=1)
    coll_b = f"adaclip_{model_b}"
    index_videos(tmp_path / "ckpt_b", qdrant, coll_b, list(indexed_videos.videos.values()))
    models = tmp_path / "models"
    publish_checkpoint(str(indexed_videos.checkpoint), str(models))
    publish_checkpoint(str(tmp_path / "ckpt_b"), str(models))
    expected = {
        model_a: _expected(InlineEncoder(str(indexed_videos.checkpoint)), qdrant, indexed_videos.collection),
        model_b: _expected(InlineEncoder(str(tmp_path / "ckpt_b")), qdrant, coll_b),
    }  # fmt: skip
    assert expected[model_a] != expected[model_b]
    admin = EdgeVideoStore(qdrant)
    admin.set_alias("videos", indexed_videos.collection)

    encoder = InlineEncoder(str(indexed_videos.checkpoint), models_root=str(models))
    metrics = RequestMetrics()
    service = SearchService(
        encoder=encoder,
        open_store=lambda: EdgeVideoStore(qdrant),
        collection="videos",
        media=MediaResolver(None),
        alias_check_s=0.05,
        on_mismatch=lambda: metrics.refused("model_mismatch"),
    )
    client = TestClient(create_api(service, ApiOptions(metrics=metrics)))
    answers: list[tuple[int, str | None, bool]] = []
    switched = threading.Event()
    deadline = time.monotonic() + 60
    try:
        i = 0
        while time.monotonic() < deadline and len(answers) < 600:
            query = QUERIES[i % len(QUERIES)]
            r = client.post("/search", json={"query": query, "top_k": 4})
            body = r.json()
            model = body.get("model_id")
            got = [(h["video_id"], round(h["score"], 5)) for h in body.get("results", [])]
            consistent = r.status_code == 200 and got == expected.get(model, {}).get(query)
            answers.append((r.status_code, model, consistent))
            i += 1
            if i == 20:
                admin.set_alias("videos", coll_b)  # the switch, mid-loop
                switched.set()
            if switched.is_set() and sum(m == model_b for _, m, _ in answers) >= 30:
                break
        statuses = [s for s, _, _ in answers]
        assert statuses.count(200) == len(answers), {s: statuses.count(s) for s in statuses}
        assert all(c for _, _, c in answers), "an answer mixed models or did not match"
        models_seen = [m for _, m, _ in answers]
        first_b = models_seen.index(model_b)
        assert first_b >= 20 and set(models_seen[:first_b]) == {model_a}
        assert set(models_seen[first_b:]) == {model_b}, "went back to the old model"
        ready = client.get("/readyz").json()
        assert ready["model_id"] == model_b and ready["physical_collection"] == coll_b

        # an embedding of another model than the collection's is refused and counted
        service.encoder = WrongModel(encoder)
        r = client.post("/search", json={"query": "a red circle"})
        assert r.status_code == 503 and "refused" in r.json()["error"]
        assert metrics.refusal_counts == {"model_mismatch": 1}
        service.encoder = encoder

        # the alias points at a collection of a model never published: refused, not mixed
        other = EdgeVideoStore(qdrant)
        other.ensure_collection("coll_c", encoder.info.dim, 2, "cccccccccccccccc")
        other.upsert([_record("/v/c.mp4", "cccccccccccccccc", encoder.info.dim)])
        other.close()
        admin.set_alias("videos", "coll_c")
        time.sleep(0.1)
        statuses = []
        for _ in range(50):
            statuses.append(client.post("/search", json={"query": "x"}).status_code)
            if statuses[-1] == 503:
                break
            time.sleep(0.05)
        assert statuses[-1] == 503 and set(statuses) <= {200, 503}
    finally:
        admin.close()
        service.close()
        encoder.close()


def test_prefix_scan_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix that is not a directory examines at most PREFIX_SCAN_LIMIT rows, and frame
    vectors are fetched for the kept rows only."""
    from pipelines.store import base

    store = EdgeVideoStore(tmp_path / "q")
    store.ensure_collection("c", 8, 2, "m")
    store.upsert([_record(f"/v/{i:03d}.mp4", "m") for i in range(60)])
    store.upsert([_record("/v/zzz.mp4", "m")])
    examined: list[int] = []
    fetched: list[int] = []
    query, retrieve = store._query, store._retrieve_with_frames
    with_frames: list[bool] = []

    def counting_query(*a: Any) -> Any:
        examined.append(a[1])
        with_frames.append(a[4])
        return query(*a)

    monkeypatch.setattr(store, "_query", counting_query)
    monkeypatch.setattr(
        store, "_retrieve_with_frames", lambda ids: fetched.append(len(ids)) or retrieve(ids)
    )
    monkeypatch.setattr(base, "PREFIX_SCAN_LIMIT", 20)
    hits = store.search(np.ones(8), top_k=3, uri_prefix="/v/0", rerank=True)
    # every candidate kept for the re-rank (the examined rows under /v/0) gets its frames,
    # in one fetch; the pages scanned carry none
    assert sum(examined) == 20 and len(fetched) == 1 and 0 < fetched[0] <= 20
    assert not any(with_frames)
    assert len(hits) == 3 and all(h.uri.startswith("/v/0") for h in hits)
    monkeypatch.setattr(base, "PREFIX_SCAN_LIMIT", 4096)
    examined.clear()
    assert [h.video_id for h in store.search(np.ones(8), top_k=3, uri_prefix="/v/z")] == ["zzz"]
    assert examined == [64]  # one page: the whole (61-row) collection, no doubling beyond it
    store.close()
