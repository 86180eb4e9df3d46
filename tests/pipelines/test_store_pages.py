"""The store at more than one page: a few thousand points, both backends ("congruence").

Listing (`iter_videos`), prefix paging, the plan stage's batched lookup, failure records,
and the mark and sweep of `--prune` all cross page boundaries (SCROLL_PAGE = 1024).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.plan import plan_rows
from pipelines.store import (
    EdgeVideoStore,
    FailedVideo,
    IndexedState,
    VideoRecord,
    VideoStore,
    point_id_for,
)
from pipelines.store.base import SCROLL_PAGE
from pipelines.store.server import ServerVideoStore

D, K = 8, 2
MODEL = "model-p"
SIZES = {"edge": 3000, "server": 1100}  # local mode is pure Python: fewer, still > 1 page


def records(uris: list[str], etag: str = "e1") -> list[VideoRecord]:
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((len(uris), K, D)).astype(np.float32) + 0.1
    return [
        VideoRecord(
            uri=u,
            video_id=Path(u).stem,
            etag=etag,
            size_bytes=100,
            duration_s=1.0,
            video_vector=frames[i].mean(axis=0),
            frame_vectors=frames[i],
            frame_ts=[0.0, 0.5],
            frame_weights=[0.5, 0.5],
            model_id=MODEL,
        )
        for i, u in enumerate(uris)
    ]


def uris_of(n: int) -> list[str]:
    """Half under s3://b/a/, half under s3://b/c/ (two directory prefixes)."""
    return [f"s3://b/{'a' if i % 2 else 'c'}/v{i:05d}.mp4" for i in range(n)]


def open_filled(kind: str, folder: Path) -> VideoStore:
    n = SIZES[kind]
    store: VideoStore
    if kind == "edge":
        store = EdgeVideoStore(folder / "edge")
    else:
        store = ServerVideoStore(path=str(folder / "local"))
    store.ensure_collection("videos", D, K, MODEL)
    uris = uris_of(n)
    for i in range(0, n, 500):
        store.upsert(records(uris[i : i + 500]))
    return store


@pytest.fixture(scope="module", params=["edge", "server"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VideoStore, int]]:
    """A filled store per backend for the tests that only read."""
    store = open_filled(request.param, tmp_path_factory.mktemp(request.param))
    yield store, SIZES[request.param]
    store.close()


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[VideoStore, int]]:
    """A filled embedded store of its own, for the tests that write."""
    store = open_filled("edge", tmp_path)
    yield store, SIZES["edge"]
    store.close()


def test_listing_and_prefix_paging_cross_pages(shared: tuple[VideoStore, int]) -> None:
    store, n = shared
    assert n > SCROLL_PAGE
    assert store.count() == n
    listed = [row["uri"] for row in store.iter_videos()]
    assert len(listed) == len(set(listed)) == n
    under_a = [row["uri"] for row in store.iter_videos("s3://b/a/")]
    assert sorted(under_a) == sorted(u for u in uris_of(n) if "/a/" in u)
    odd = [row["uri"] for row in store.iter_videos("s3://b/a/v000")]  # not at a '/'
    assert sorted(odd) == sorted(u for u in uris_of(n) if u.startswith("s3://b/a/v000"))


def test_batched_lookup_and_plan(shared: tuple[VideoStore, int]) -> None:
    store, n = shared
    uris = uris_of(n)
    asked = [*uris[:1500], "s3://b/a/new.mp4"]
    known = store.lookup(asked)
    assert len(known) == min(n, 1500) and "s3://b/a/new.mp4" not in known
    assert known[uris[0]] == IndexedState(etag="e1", size_bytes=100, failed=False)

    etags = ["e1"] * len(asked)
    etags[1] = "e2"  # changed
    todo, counts = plan_rows(asked, etags, [100] * len(asked), known, retry_failed=False)
    assert [asked[i] for i in todo] == [uris[1], "s3://b/a/new.mp4"]
    assert counts["skipped"] == len(asked) - 2 and counts["known"] == len(known)


def test_failure_records_are_not_videos(filled: tuple[VideoStore, int]) -> None:
    store, n = filled
    bad = FailedVideo("s3://b/a/bad.mp4", "x1", 7, "decode", "NotAMediaFileError", "m", MODEL)
    store.record_failures([bad])
    assert store.count() == n  # not a video
    assert store.get(point_id_for(bad.uri)) is None
    assert store.lookup([bad.uri])[bad.uri] == IndexedState("x1", 7, failed=True)
    assert "s3://b/a/bad.mp4" not in {row["uri"] for row in store.iter_videos("s3://b/a/")}
    # same etag: skipped (unless retried); another etag: indexed again
    for etag, retry, expected in (("x1", False, []), ("x1", True, [0]), ("x2", False, [0])):
        todo, counts = plan_rows([bad.uri], [etag], [7], store.lookup([bad.uri]), retry)
        assert todo == expected
    assert counts["skipped_failed"] == 0
    _, counts = plan_rows([bad.uri], ["x1"], [7], store.lookup([bad.uri]), False)
    assert counts["skipped_failed"] == 1 and counts["skipped_failed_bytes"] == 7


def test_mark_and_sweep_under_a_prefix(filled: tuple[VideoStore, int]) -> None:
    store, n = filled
    uris = uris_of(n)
    under_a = [u for u in uris if "/a/" in u]
    gone = set(under_a[::7])  # deleted from the bucket
    store.record_failures(
        [FailedVideo("s3://b/a/bad.mp4", "x", 5, "decode", "E", "m", MODEL)]  # gone too
    )
    still = [u for u in under_a if u not in gone]
    for i in range(0, len(still), 700):  # the plan stage marks batch by batch
        store.mark_seen(still[i : i + 700], "run-2")
    assert store.prefix_totals("s3://b/a/") == (len(under_a) + 1, 100 * len(under_a) + 5)
    assert store.prefix_totals("s3://b/a/", unseen_by="run-2") == (
        len(gone) + 1,
        100 * len(gone) + 5,
    )
    deleted = store.sweep("s3://b/a/", "run-2")
    assert deleted == (len(gone) + 1, 100 * len(gone) + 5)
    left = {row["uri"] for row in store.iter_videos()}
    assert left == set(uris) - gone  # the other prefix untouched, though never marked
    assert store.sweep("s3://b/a/", "run-2") == (0, 0)
    with pytest.raises(ValueError, match="directory prefix"):
        store.sweep("s3://b/a", "run-2")
