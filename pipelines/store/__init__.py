"""The Qdrant video index: one interface, an embedded and a server backend.

`open_store` picks the backend from the two settings every entry point carries
(`--qdrant-url` wins over `--qdrant-path`). qdrant-client is imported only when the server
backend is used (it takes about a second to import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.store.base import (
    META_POINT_ID,
    NAMESPACE,
    CollectionInfo,
    FailedVideo,
    IndexedState,
    ModelMismatchError,
    SearchHit,
    VideoRecord,
    VideoStore,
    point_id_for,
    uri_dir_prefixes,
)
from pipelines.store.edge import DEFAULT_QDRANT_PATH, EdgeVideoStore
from pipelines.store.rerank import qscore_rerank

if TYPE_CHECKING:
    from pipelines.store.server import ServerVideoStore

__all__ = [
    "DEFAULT_QDRANT_PATH",
    "META_POINT_ID",
    "NAMESPACE",
    "CollectionInfo",
    "EdgeVideoStore",
    "FailedVideo",
    "IndexedState",
    "ModelMismatchError",
    "SearchHit",
    "ServerVideoStore",
    "VideoRecord",
    "VideoStore",
    "open_store",
    "point_id_for",
    "qscore_rerank",
    "uri_dir_prefixes",
]


def open_store(
    qdrant_path: str | None = None,
    qdrant_url: str | None = None,
    api_key: str | None = None,
    create_owner: bool = False,
) -> VideoStore:
    """The video store the settings point at.

    An embedded folder is reached through its store actor (`pipelines.store.actor`) when
    this process is on a Ray cluster and the actor runs, or `create_owner` asks to start
    it; otherwise it is opened in this process.

    Args:
        qdrant_path: folder of the embedded index (default `./.adaclip/qdrant`).
        qdrant_url: URL of a Qdrant server; when given, it wins over `qdrant_path`.
        api_key: the server's API key.
        create_owner: on a Ray cluster, start the folder's store actor if none runs.

    Returns:
        An unbound store: call `ensure_collection` (writers) or `open_collection` (readers).
    """
    if qdrant_url:
        from pipelines.store.server import ServerVideoStore

        return ServerVideoStore(url=qdrant_url, api_key=api_key)
    from pipelines.store.actor import shared_store

    shared = shared_store(qdrant_path, create=create_owner)
    if shared is not None:
        return shared
    return EdgeVideoStore(qdrant_path or DEFAULT_QDRANT_PATH)


def __getattr__(name: str) -> Any:
    if name == "ServerVideoStore":
        from pipelines.store.server import ServerVideoStore

        return ServerVideoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
