"""The server collection profile: flags -> collection config, payload indexes on every
writer open, bulk load deferring HNSW and restoring it, the sizing formulas."""

from __future__ import annotations

from typing import Any

import pytest
from qdrant_client import models as qm

from pipelines.index import collection_profile
from pipelines.settings import IndexSettings
from pipelines.store.base import FRAMES_VECTOR, INDEXED_FIELDS, VIDEO_VECTOR
from pipelines.store.profile import (
    DEFAULT_INDEXING_THRESHOLD_KB,
    CollectionProfile,
    memory_per_million,
)
from pipelines.store.server import ServerVideoStore

D, K = 8, 3


class Spy:
    """Records the calls of some client methods; ``threshold`` fakes the collection's
    indexing_threshold (local mode always reports Qdrant's default)."""

    def __init__(self, client: Any, threshold: int | None = None) -> None:
        self.client = client
        self.calls: list[tuple[str, Any]] = []
        self.threshold = threshold

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name == "get_collection" and self.threshold is not None:

            def get_collection(*args: Any, **kwargs: Any) -> Any:
                info = attr(*args, **kwargs)
                info.config.optimizer_config.indexing_threshold = self.threshold
                return info

            return get_collection
        if name not in {"create_payload_index", "update_collection", "create_collection"}:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args[1] if len(args) > 1 else kwargs))
            return attr(*args, **kwargs)

        return call


def test_the_profile_is_the_collection_config() -> None:
    profile = CollectionProfile(shards=3, replicas=2, write_consistency=2, frames_int8=True)
    store = ServerVideoStore(location=":memory:", profile=profile)
    spy = Spy(store._client)
    store._client = spy  # type: ignore[assignment]
    store.ensure_collection("videos", D, K, "m1")
    ((_, created),) = [c for c in spy.calls if c[0] == "create_collection"]
    assert (created["shard_number"], created["replication_factor"]) == (3, 2)
    assert created["write_consistency_factor"] == 2 and created["on_disk_payload"] is True
    assert created["optimizers_config"] is None  # no bulk load: HNSW as usual
    params = spy.client.get_collection("videos").config.params  # what local mode keeps
    assert isinstance(params.vectors, dict)
    video, frames = params.vectors[VIDEO_VECTOR], params.vectors[FRAMES_VECTOR]
    assert isinstance(video.quantization_config, qm.ScalarQuantization)
    assert video.quantization_config.scalar.type == qm.ScalarType.INT8
    assert video.quantization_config.scalar.always_ram is True and video.on_disk is True
    assert frames.on_disk is True and frames.hnsw_config is not None and frames.hnsw_config.m == 0
    assert isinstance(frames.quantization_config, qm.ScalarQuantization)
    assert store._search_params is not None  # int8 candidates rescored with the originals
    assert store._search_params.quantization is not None
    assert store._search_params.quantization.rescore is True
    store.close()


def test_plain_profile() -> None:
    store = ServerVideoStore(
        location=":memory:",
        profile=CollectionProfile(video_int8=False, frames_on_disk=False, payload_on_disk=False),
    )
    store.ensure_collection("videos", D, K, "m1")
    params = store._client.get_collection("videos").config.params
    assert isinstance(params.vectors, dict)
    assert params.vectors[VIDEO_VECTOR].quantization_config is None
    assert not params.vectors[FRAMES_VECTOR].on_disk
    assert store._search_params is None
    store.close()


def test_payload_indexes_are_made_on_every_writer_open(tmp_path: Any) -> None:
    path = str(tmp_path / "q")
    store = ServerVideoStore(path=path)
    store.ensure_collection("videos", D, K, "m1")  # creates the collection
    store.close()
    again = ServerVideoStore(path=path)
    spy = Spy(again._client)
    again._client = spy  # type: ignore[assignment]
    again.ensure_collection("videos", D, K, "m1")  # exists: indexes made all the same
    assert sorted(arg for name, arg in spy.calls if name == "create_payload_index") == sorted(
        INDEXED_FIELDS
    )
    spy.calls.clear()
    again.open_collection("videos")  # a reader makes nothing
    assert spy.calls == []
    again.close()


def test_bulk_load_defers_hnsw_and_restores_it() -> None:
    store = ServerVideoStore(location=":memory:", profile=CollectionProfile(bulk_load=True))
    spy = Spy(store._client)
    store._client = spy  # type: ignore[assignment]
    store.ensure_collection("videos", D, K, "m1")
    ((_, created),) = [c for c in spy.calls if c[0] == "create_collection"]
    assert created["optimizers_config"].indexing_threshold == 0  # HNSW deferred
    spy.threshold = 20000  # an existing collection with HNSW on: switched off at open
    store.ensure_collection("videos", D, K, "m1")
    spy.calls.clear()
    assert store.optimize() is True  # the end of the load: HNSW built
    ((name, arg),) = spy.calls
    assert name == "update_collection"
    assert arg["optimizers_config"].indexing_threshold == DEFAULT_INDEXING_THRESHOLD_KB
    assert store.optimize() is False
    store.close()

    # a crashed bulk load left it deferred: the next (non-bulk) writer restores it
    store = ServerVideoStore(location=":memory:")
    store.ensure_collection("videos", D, K, "m1")
    store._client = Spy(store._client, threshold=0)  # type: ignore[assignment]
    store.ensure_collection("videos", D, K, "m1")
    ((name, arg),) = [c for c in store._client.calls if c[0] == "update_collection"]  # type: ignore[attr-defined]
    assert arg["optimizers_config"].indexing_threshold == DEFAULT_INDEXING_THRESHOLD_KB
    store.close()


def test_flags_make_the_profile() -> None:
    settings = IndexSettings(
        source="s3://b/v/",
        qdrant_url="http://q:6333",
        qdrant_shards=4,
        qdrant_replicas=2,
        qdrant_write_consistency=2,
        qdrant_bulk_load=True,
        qdrant_video_int8=False,
    )
    profile = collection_profile(settings)
    assert profile == CollectionProfile(
        video_int8=False, shards=4, replicas=2, write_consistency=2, bulk_load=True
    )
    with pytest.raises(ValueError, match="write consistency 3 > replicas 2"):
        CollectionProfile(replicas=2, write_consistency=3)


def test_memory_per_million_follows_the_documented_formulas() -> None:
    # all in RAM: (1 + K) * D * 4 bytes * 1.5 + payload, D=512, K=12
    plain = CollectionProfile(video_int8=False, frames_on_disk=False, payload_on_disk=False)
    assert memory_per_million(plain)["ram_gb"] == pytest.approx(13 * 512 * 4 * 1.5 / 1e3 + 2.0)
    # the default: int8 video in RAM only
    assert memory_per_million(CollectionProfile())["ram_gb"] == pytest.approx(512 * 1.5 / 1e3)
    assert memory_per_million(CollectionProfile())["disk_gb"] == pytest.approx(
        (13 * 512 * 4 + 512 + 2000) / 1e3
    )
