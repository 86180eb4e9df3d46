"""The video store: one set of test bodies run against both backends ("congruence").

`edge` is the embedded qdrant-edge-py store on a temp folder; `server` is qdrant-client's
persistent local mode, standing in for a Qdrant server (same client API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.store import (
    EdgeVideoStore,
    ModelMismatchError,
    VideoRecord,
    VideoStore,
    open_store,
    point_id_for,
    qscore_rerank,
    uri_dir_prefixes,
)
from pipelines.store.base import LISTED_FIELDS, META_POINT_ID, prefix_filter, rerank_rows
from pipelines.store.server import ServerVideoStore

D, K = 16, 4
MODEL = "model-a"
PAYLOAD_KEYS = {
    "uri",
    "video_id",
    "etag",
    "size_bytes",
    "duration_s",
    "frame_ts",
    "frame_weights",
    "model_id",
    "indexed_at",
}


def make_record(
    rng: np.random.Generator,
    uri: str,
    *,
    model_id: str = MODEL,
    etag: str = "e1",
    k: int = K,
) -> VideoRecord:
    frames = rng.standard_normal((k, D)).astype(np.float32)
    frames *= rng.uniform(0.5, 3.0, size=(k, 1)).astype(np.float32)  # raw, un-normalised
    video = frames.mean(axis=0)
    return VideoRecord(
        uri=uri,
        video_id=Path(uri).stem,
        etag=etag,
        size_bytes=1000,
        duration_s=10.0,
        video_vector=video,
        frame_vectors=frames,
        frame_ts=[1.0 + 2.0 * i for i in range(k)],
        frame_weights=[1.0 / k] * k,
        model_id=model_id,
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def qscore_direct(q: np.ndarray, frames: np.ndarray, temperature: float) -> float:
    """Q-Score straight from METHOD.md section 5, on raw frame embeddings."""
    q = q / np.linalg.norm(q)
    cos = frames @ q / np.linalg.norm(frames, axis=1)
    w = np.exp(cos / temperature)
    w /= w.sum()
    v = (w[:, None] * frames).sum(axis=0)
    return float(q @ (v / np.linalg.norm(v)))


StoreFactory = Callable[[], VideoStore]


@pytest.fixture(params=["edge", "server"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens a store on the same location each call (so a second call is a reopen)."""
    opened: list[VideoStore] = []

    def make() -> VideoStore:
        if request.param == "edge":
            store: VideoStore = EdgeVideoStore(tmp_path / "edge")
        else:
            store = ServerVideoStore(path=str(tmp_path / "local"))
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(factory: StoreFactory) -> VideoStore:
    s = factory()
    s.ensure_collection("videos", D, K, MODEL)
    return s


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---- both backends ------------------------------------------------------------------------


def test_ensure_records_model_id(factory: StoreFactory) -> None:
    s = factory()
    with pytest.raises(RuntimeError, match="ensure_collection"):
        s.count()
    with pytest.raises(LookupError):
        s.open_collection("videos")
    info = s.ensure_collection("videos", D, K, MODEL)
    assert (info.name, info.dim, info.num_frames, info.model_id) == ("videos", D, K, MODEL)
    assert s.count() == 0
    assert s.ensure_collection("videos", D, K, MODEL) == info  # idempotent
    assert s.open_collection("videos") == info
    assert s.get(META_POINT_ID) is None
    with pytest.raises(ValueError, match="dim="):
        s.ensure_collection("videos", D + 1, K, MODEL)


def test_model_mismatch_refused(store: VideoStore, rng: np.random.Generator) -> None:
    with pytest.raises(ModelMismatchError, match="built by model 'model-a'.*'model-b'"):
        store.ensure_collection("videos", D, K, "model-b")
    store.ensure_collection("videos", D, K, MODEL)
    with pytest.raises(ModelMismatchError, match="--collection"):
        store.upsert([make_record(rng, "s3://b/x.mp4", model_id="model-b")])
    assert store.count() == 0
    assert store.ensure_collection("videos-b", D, K, "model-b").model_id == "model-b"


def test_upsert_is_idempotent_by_uri(store: VideoStore, rng: np.random.Generator) -> None:
    store.upsert([make_record(rng, "s3://b/a/x.mp4", etag="e1")])
    store.upsert([make_record(rng, "s3://b/a/x.mp4", etag="e2")])
    assert store.count() == 1
    hit = store.get(point_id_for("s3://b/a/x.mp4"))
    assert hit is not None and hit.payload["etag"] == "e2"
    assert hit.id == point_id_for("s3://b/a/x.mp4")
    with pytest.raises(ValueError, match="at most 4 frames"):
        store.upsert([make_record(rng, "s3://b/y.mp4"), make_record(rng, "s3://b/z.mp4", k=K + 1)])
    assert store.count() == 1


def test_indexed_etags(store: VideoStore, rng: np.random.Generator) -> None:
    uris = ["s3://b/a/1.mp4", "s3://b/a/2.mp4", "s3://b/ab/3.mp4", "s3://c/4.mp4"]
    store.upsert([make_record(rng, u, etag=f"t{i}") for i, u in enumerate(uris)])
    assert store.indexed_etags() == {u: f"t{i}" for i, u in enumerate(uris)}
    assert set(store.indexed_etags("s3://b/a/")) == set(uris[:2])
    assert set(store.indexed_etags("s3://b/a")) == set(uris[:3])  # str.startswith semantics
    assert store.indexed_etags("s3://nope/") == {}


LS_URIS = ["s3://b/x/2.mp4", "s3://b/x/1.mp4", "s3://b/y/3.mp4"]


def test_iter_videos_lists_payload_fields(store: VideoStore, rng: np.random.Generator) -> None:
    store.upsert([make_record(rng, u, etag=f"e{i}") for i, u in enumerate(LS_URIS)])
    rows = sorted(store.iter_videos(), key=lambda r: r["uri"])
    assert [r["uri"] for r in rows] == sorted(LS_URIS)
    assert all(set(r) == set(LISTED_FIELDS) for r in rows)
    by_uri = {r["uri"]: r for r in rows}
    assert by_uri["s3://b/y/3.mp4"]["etag"] == "e2"
    assert by_uri["s3://b/x/1.mp4"]["video_id"] == "1"
    assert all(r["model_id"] == MODEL and r["duration_s"] == 10.0 for r in rows)
    assert all(r["indexed_at"] for r in rows)
    assert {r["uri"] for r in store.iter_videos("s3://b/x/")} == set(LS_URIS[:2])


def test_iter_videos_needs_a_bound_collection(tmp_path: Path) -> None:
    with EdgeVideoStore(tmp_path / "q") as unbound, pytest.raises(RuntimeError):
        next(unbound.iter_videos())


def test_search_nearest_with_cosine_scores(store: VideoStore, rng: np.random.Generator) -> None:
    records = [make_record(rng, f"s3://b/v{i}.mp4") for i in range(20)]
    store.upsert(records)
    q = records[7].video_vector + 0.05 * rng.standard_normal(D).astype(np.float32)
    hits = store.search(q, top_k=5)
    want = sorted(records, key=lambda r: -cosine(q, r.video_vector))[:5]
    assert [h.uri for h in hits] == [r.uri for r in want]
    assert hits[0].video_id == "v7"
    for h, r in zip(hits, want, strict=True):
        assert h.score == pytest.approx(cosine(q, r.video_vector), abs=1e-5)
        assert set(h.payload) == PAYLOAD_KEYS
        assert h.frame_ts == r.frame_ts and h.best_moment_s is None
    assert store.search(q, top_k=0) == []


def test_uri_prefix_filter(store: VideoStore, rng: np.random.Generator) -> None:
    dirs = ["s3://b/a/", "s3://b/ab/", "s3://b/c/d/"]
    records = [make_record(rng, f"{dirs[i % 3]}{i}.mp4") for i in range(30)]
    store.upsert(records)
    q = rng.standard_normal(D).astype(np.float32)
    for prefix in ["s3://b/a/", "s3://b/a", "s3://b/c/", "s3://b/c/d/1", "s3:"]:
        hits = store.search(q, top_k=4, uri_prefix=prefix)
        kept = [r for r in records if r.uri.startswith(prefix)]
        want = sorted(kept, key=lambda r: -cosine(q, r.video_vector))[:4]
        assert [h.uri for h in hits] == [r.uri for r in want], prefix


def test_rerank_is_exact_qscore(store: VideoStore, rng: np.random.Generator) -> None:
    records = [make_record(rng, f"/data/v{i}.mp4", k=K if i % 5 else K - 2) for i in range(25)]
    store.upsert(records)
    q = rng.standard_normal(D).astype(np.float32)
    q /= np.linalg.norm(q)
    temperature = 0.2
    hits = store.search(q, top_k=10, rerank=True, rerank_candidates=25, agg_temperature=temperature)
    by_uri = {r.uri: r for r in records}
    want = sorted(records, key=lambda r: -qscore_direct(q, r.frame_vectors, temperature))
    assert [h.uri for h in hits] == [r.uri for r in want[:10]]
    for h in hits:
        r = by_uri[h.uri]
        assert h.score == pytest.approx(qscore_direct(q, r.frame_vectors, temperature), abs=1e-5)
        cos = r.frame_vectors @ q / np.linalg.norm(r.frame_vectors, axis=1)
        assert h.best_moment_s == r.frame_ts[int(cos.argmax())]
        assert h.frame_scores == pytest.approx(cos.tolist(), abs=1e-5)
    # Fewer candidates: the Q-Score re-orders the best few by `video` only.
    first = {h.uri for h in store.search(q, top_k=5)}
    assert {h.uri for h in store.search(q, top_k=5, rerank=True, rerank_candidates=5)} == first


def test_get_by_video_id(store: VideoStore, rng: np.random.Generator) -> None:
    store.upsert([make_record(rng, "s3://b/a/clip42.mp4"), make_record(rng, "s3://b/z.mp4")])
    hit = store.get("clip42")
    assert hit is not None and hit.uri == "s3://b/a/clip42.mp4" and hit.video_id == "clip42"
    assert store.get("nothing") is None
    assert store.get(point_id_for("s3://b/none.mp4")) is None


def test_reopen_sees_data_and_optimize(factory: StoreFactory, rng: np.random.Generator) -> None:
    s = factory()
    s.ensure_collection("videos", D, K, MODEL)
    records = [make_record(rng, f"s3://b/v{i}.mp4") for i in range(40)]
    s.upsert(records)
    q = rng.standard_normal(D).astype(np.float32)
    before = [(h.uri, round(h.score, 5)) for h in s.search(q, top_k=5)]
    s.optimize()
    assert [(h.uri, round(h.score, 5)) for h in s.search(q, top_k=5)] == before
    s.close()
    s2 = factory()
    assert s2.open_collection("videos").model_id == MODEL
    assert s2.count() == 40
    assert [(h.uri, round(h.score, 5)) for h in s2.search(q, top_k=5)] == before


# ---- pure logic -------------------------------------------------------------------------


def test_uri_dir_prefixes_and_prefix_filter() -> None:
    assert uri_dir_prefixes("s3://b/a/c.mp4") == ["s3://b/", "s3://b/a/"]
    assert uri_dir_prefixes("/data/v/x.mp4") == ["/", "/data/", "/data/v/"]
    assert uri_dir_prefixes("file:///d/x.mp4") == ["file:///", "file:///d/"]
    assert prefix_filter(None) == (None, None)
    assert prefix_filter("s3://b/a/") == ("s3://b/a/", None)
    assert prefix_filter("s3://b/a/cl") == ("s3://b/a/", "s3://b/a/cl")
    assert prefix_filter("s3://b") == (None, "s3://b")


def test_qscore_rerank_matches_direct_computation() -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((6, 5, 8)) * rng.uniform(0.1, 4.0, size=(6, 5, 1))  # (C, K, D)
    norms = np.linalg.norm(raw, axis=2)
    norms[2, 3:] = 0.0  # video 2 has only 3 frames: the rest is padding
    unit = raw / np.linalg.norm(raw, axis=2, keepdims=True)
    unit[2, 3:] = 0.0
    q = rng.standard_normal(8)
    for t in (0.05, 1.0, 10.0):
        scores, best = qscore_rerank(q, unit, norms, t)
        for c in range(6):
            frames = raw[c, :3] if c == 2 else raw[c]
            # float32 cosines, as precise as the stored float32 vectors
            assert scores[c] == pytest.approx(qscore_direct(q, frames, t), abs=1e-6)
            cos = frames @ q / np.linalg.norm(frames, axis=1)
            assert best[c] == cos.argmax()
    with pytest.raises(ValueError):
        qscore_rerank(q, unit, norms, 0.0)


def test_rerank_uses_stored_gram_and_falls_back_without_it(
    store: VideoStore, rng: np.random.Generator
) -> None:
    records = [make_record(rng, f"/data/g{i}.mp4", k=K if i % 3 else K - 1) for i in range(9)]
    store.upsert(records)
    payload = records[1].payload()  # a video with K frames
    fv = records[1].frame_vectors.astype(np.float64)
    assert np.allclose(np.reshape(payload["frame_gram"], (K, K)), fv @ fv.T)
    q = rng.standard_normal(D).astype(np.float32)
    rows = store._query_prefixed(q, 9, None, with_frames=True)
    assert all("frame_gram" in r.payload for r in rows)
    assert all("frame_gram" not in h.payload for h in store.search(q, top_k=9))  # plain search
    with_gram = rerank_rows(rows, q, 0.5)
    for r in rows:  # points indexed before G was stored
        del r.payload["frame_gram"]
    without = rerank_rows(rows, q, 0.5)
    assert [h.uri for h in with_gram] == [h.uri for h in without]
    assert np.allclose([h.score for h in with_gram], [h.score for h in without], atol=1e-6)
    by_uri = {r.uri: r for r in records}
    for h in with_gram:
        assert h.score == pytest.approx(
            qscore_direct(q, by_uri[h.uri].frame_vectors, 0.5), abs=1e-5
        )


def test_video_record_validation(rng: np.random.Generator) -> None:
    r = make_record(rng, "s3://b/x.mp4")
    assert r.indexed_at and r.frame_vectors.dtype == np.float32
    assert r.payload()["uri_prefixes"] == ["s3://b/"]
    with pytest.raises(ValueError, match="time order"):
        VideoRecord(**{**vars(r), "frame_ts": [4.0, 3.0, 2.0, 1.0]})
    with pytest.raises(ValueError, match="frame_vectors"):
        VideoRecord(**{**vars(r), "frame_vectors": np.ones((K, D + 1), np.float32)})
    with pytest.raises(ValueError, match="zero"):
        VideoRecord(**{**vars(r), "frame_vectors": np.zeros((K, D), np.float32)})


def test_open_store_picks_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(qdrant_path=str(tmp_path / "q"))
    assert isinstance(s, EdgeVideoStore) and s.path == tmp_path / "q"
    s.close()
    seen: dict[str, object] = {}

    class FakeClient:
        def __init__(self, **kwargs: object) -> None:
            seen.update(kwargs)

        def close(self) -> None:
            pass

    monkeypatch.setattr("pipelines.store.server.QdrantClient", FakeClient)
    s2 = open_store(qdrant_path=str(tmp_path / "q"), qdrant_url="http://qdrant:6333", api_key="k")
    assert isinstance(s2, ServerVideoStore)
    assert (seen["url"], seen["api_key"]) == ("http://qdrant:6333", "k")
    s2.close()


def test_edge_store_has_one_owner(tmp_path: Path) -> None:
    s = EdgeVideoStore(tmp_path)
    s.ensure_collection("videos", D, K, MODEL)
    other = EdgeVideoStore(tmp_path)
    with pytest.raises(RuntimeError, match="already open"):
        other.open_collection("videos")
    s.close()
    assert other.open_collection("videos").model_id == MODEL
    other.close()
