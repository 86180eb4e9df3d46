"""One owner per embedded store on a Ray cluster: a named, detached store actor.

An embedded store folder (qdrant-edge) can be opened by one process at a time. On a Ray
cluster that process is a :class:`StoreActor`: named after the folder's absolute path
(``adaclip-store-<hash>`` in the ``adaclip`` namespace), detached (it outlives the job or
app that created it), pinned to the node that holds the folder. Index jobs, ``adaclip
watch``, ``adaclip ls`` and the Serve app find it by name and talk to it through
:class:`ActorVideoStore`, a :class:`~pipelines.store.VideoStore` whose backend primitives
(upsert points, retrieve, scroll, query, set payload, delete, count) are calls to the
actor. All the logic above the primitives (the skip check, search and re-rank, listing,
sweep) runs in the caller, unchanged.

Consistency: the actor runs each primitive under one lock, and a point is written by one
upsert operation, so a reader sees a video either absent or complete (its vectors and its
payload together). Searches and writes interleave call by call, so a search waits at most
for one upsert batch, never for a job.

``adaclip store status`` lists the running store actors; ``adaclip store stop`` flushes
and closes the store and ends its actor. The server backend needs no actor: every process
talks to Qdrant.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.settings import DEFAULT_QDRANT_PATH, StoreSettings, parse_settings
from pipelines.store.base import (
    CollectionInfo,
    Filter,
    FloatArray,
    Point,
    Row,
    VideoStore,
)
from pipelines.store.edge import EdgeVideoStore

log = logging.getLogger("adaclip.store")

ACTOR_NAMESPACE = "adaclip"
ACTOR_PREFIX = "adaclip-store-"
ACTOR_CONCURRENCY = 16  # calls in flight; the store itself is used under one lock
OPEN_WAIT_S = 15.0  # a killed job's process may hold the folder for a few seconds
# The primitives a client may call on a bound collection: every abstract backend
# primitive of VideoStore but opening and closing, which the actor does itself.
PRIMITIVES = frozenset(VideoStore.__abstractmethods__ - {"_open", "_close"})
ROOT_CALLS = frozenset({"_aliases", "_collection_exists", "_switch_alias"})


def store_folder(qdrant_path: str | None) -> str:
    """The absolute path that names a store (the actor's working folder is not ours)."""
    return str(Path(qdrant_path or DEFAULT_QDRANT_PATH).expanduser().resolve())


def actor_name(qdrant_path: str | None) -> str:
    """The store actor's name: a hash of the folder's absolute path."""
    digest = hashlib.sha1(store_folder(qdrant_path).encode()).hexdigest()[:16]
    return ACTOR_PREFIX + digest


class StoreActor:
    """The owner of one embedded store folder (a threaded Ray actor).

    Holds one bound :class:`EdgeVideoStore` per collection it was asked for and runs every
    store call under one lock.

    Args:
        path: the store folder (absolute).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._stores: dict[str, EdgeVideoStore] = {}
        self._root = EdgeVideoStore(path)  # unbound: aliases, which live beside the shards
        self._started = time.time()
        self._calls: Counter[str] = Counter()
        self._stopped = False

    def status(self) -> dict[str, Any]:
        """Path, bound collections, process, node, uptime and calls served by kind."""
        import ray

        return {
            "path": self.path,
            "collections": sorted(self._stores),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "uptime_s": round(time.time() - self._started, 1),
            "calls": dict(self._calls),
        }

    def bind(
        self, name: str, dim: int, num_frames: int, model_id: str, create: bool
    ) -> CollectionInfo:
        """Open (``create``: create if missing) collection ``name``; its info.

        Raises:
            LookupError: missing and not ``create``.
            ModelMismatchError, ValueError: as ``VideoStore.ensure_collection``.
        """
        with self._lock:
            self._check_running()
            self._calls["bind"] += 1
            resolve = getattr(self._root, "resolve_alias", None)  # stores without aliases
            physical = resolve(name) if resolve is not None and not create else name
            store = self._stores.get(physical)
            fresh = store is None
            if store is None:
                store = EdgeVideoStore(self.path)
            try:
                if create:
                    info = _when_free(
                        lambda: store.ensure_collection(physical, dim, num_frames, model_id)
                    )
                else:
                    info = _when_free(lambda: store.open_collection(physical))
            except BaseException:
                if fresh:
                    store.close()  # let go of the shard: another call may bind it again
                raise
            self._stores[info.name] = store
            return info

    def open(self, name: str, dim: int, create: bool) -> bool:
        """The ``_open`` primitive: whether collection ``name`` exists (or was created)."""
        with self._lock:
            self._check_running()
            if name in self._stores:
                return True
            store = EdgeVideoStore(self.path)
            if not _when_free(lambda: store._open(name, dim, create)):
                return False
            self._stores[name] = store
            return True

    def call(self, collection: str, method: str, *args: Any) -> Any:
        """Run backend primitive ``method`` on ``collection`` (bound again if needed, e.g.
        after the actor restarted)."""
        if method not in PRIMITIVES:
            raise ValueError(f"not a store primitive: {method!r}")
        with self._lock:
            self._check_running()
            self._calls[method] += 1
            store = self._stores.get(collection)
            if store is None:
                self.bind(collection, 0, 0, "", create=False)
                store = self._stores[collection]
            return getattr(store, method)(*args)

    def root_call(self, method: str, *args: Any) -> Any:
        """Run a store-wide primitive (the aliases of the folder)."""
        if method not in ROOT_CALLS:
            raise ValueError(f"not a store-wide primitive: {method!r}")
        with self._lock:
            self._check_running()
            self._calls[method] += 1
            return getattr(self._root, method)(*args)

    def optimize(self, collection: str) -> bool:
        """Build the collection's indexes and flush it (blocking; reads wait)."""
        with self._lock:
            self._check_running()
            self._calls["optimize"] += 1
            if collection not in self._stores:
                self.bind(collection, 0, 0, "", create=False)
            return self._stores[collection].optimize()

    def flush(self) -> int:
        """Write everything held to disk; the number of collections flushed."""
        with self._lock:
            self._calls["flush"] += 1
            for store in self._stores.values():
                store.flush()
            return len(self._stores)

    def stop(self) -> list[str]:
        """Flush and close every collection; later calls fail. The collections closed."""
        with self._lock:
            names = sorted(self._stores)
            stores, self._stores = self._stores, {}
            self._stopped = True
            for store in stores.values():
                store.close()  # flushes, then lets go of the shard's lock
            return names

    def _check_running(self) -> None:
        if self._stopped:
            raise RuntimeError(f"the store actor of {self.path} was stopped")


def _when_free(fn: Any, wait_s: float = OPEN_WAIT_S) -> Any:
    """``fn()``, retried while the folder is still held by another (dying) process."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fn()
        except RuntimeError as err:
            if "already open" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# ---- finding and creating the actor --------------------------------------------------------


def find_store_actor(qdrant_path: str | None) -> Any | None:
    """The running store actor of this folder, or None (Ray must be initialized)."""
    import ray

    try:
        return ray.get_actor(actor_name(qdrant_path), namespace=ACTOR_NAMESPACE)
    except ValueError:
        return None


def store_actor(qdrant_path: str | None) -> Any:
    """The store actor of this folder, created on this node when none runs yet."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    found = find_store_actor(qdrant_path)
    if found is not None:
        return found
    node = ray.get_runtime_context().get_node_id()
    actor_cls: Any = ray.remote(StoreActor)
    handle = actor_cls.options(
        name=actor_name(qdrant_path),
        namespace=ACTOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,  # two creators at once: both get the same actor
        num_cpus=0,
        max_concurrency=ACTOR_CONCURRENCY,
        max_restarts=3,  # a crashed owner comes back and binds collections on demand
        max_task_retries=3,  # every primitive is idempotent (writes are by point id)
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(store_folder(qdrant_path))
    ray.get(handle.status.remote())
    log.info("store actor %s owns %s", actor_name(qdrant_path), store_folder(qdrant_path))
    return handle


def ray_is_initialized() -> bool:
    """Whether this process is connected to a Ray cluster (without importing Ray)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shared_store(qdrant_path: str | None, create: bool) -> ActorVideoStore | None:
    """A client of the folder's store actor when this process is on a Ray cluster: the
    running one, or (``create``) a new one; None when not on Ray, or none runs and not
    ``create``."""
    if not ray_is_initialized():
        return None
    handle = store_actor(qdrant_path) if create else find_store_actor(qdrant_path)
    return None if handle is None else ActorVideoStore(handle, store_folder(qdrant_path))


def list_store_actors() -> list[tuple[str, Any]]:
    """(name, handle) of every store actor of the cluster."""
    import ray

    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = entry["name"], entry["namespace"]
        if namespace == ACTOR_NAMESPACE and name.startswith(ACTOR_PREFIX):
            try:
                found.append((name, ray.get_actor(name, namespace=namespace)))
            except ValueError:  # ended in between
                continue
    return found


def stop_store_actor(handle: Any, timeout_s: float = 60.0) -> list[str]:
    """Flush and close the store, then end its actor; the collections it closed."""
    import ray

    try:
        closed = list(ray.get(handle.stop.remote(), timeout=timeout_s))
    finally:
        ray.kill(handle, no_restart=True)
    return closed


# ---- the client ----------------------------------------------------------------------------


class ActorVideoStore(VideoStore):
    """A :class:`VideoStore` whose backend is the folder's store actor.

    ``close`` only unbinds this client: the actor keeps the store open for the others.
    Errors raised in the actor are raised here as themselves (``LookupError``,
    ``ModelMismatchError`` ...).

    Args:
        actor: handle of the :class:`StoreActor`.
        path: the store folder (for messages).
    """

    def __init__(self, actor: Any, path: str) -> None:
        super().__init__()
        self.actor = actor
        self.path = path
        self._name: str | None = None

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def ensure_collection(
        self, name: str, dim: int, num_frames: int, model_id: str
    ) -> CollectionInfo:
        self._info = None
        info: CollectionInfo = self._get(
            self.actor.bind.remote(name, dim, num_frames, model_id, True)
        )
        self._name, self._info = info.name, info
        return info

    def open_collection(self, name: str) -> CollectionInfo:
        self._info = None
        info: CollectionInfo = self._get(self.actor.bind.remote(name, 0, 0, "", False))
        self._name, self._info = info.name, info
        return info

    def optimize(self) -> bool:
        return bool(self._get(self.actor.optimize.remote(self._bound())))

    def flush(self) -> None:
        self._get(self.actor.flush.remote())

    def _bound(self) -> str:
        if self._name is None:
            raise RuntimeError("no collection bound: call ensure_collection() first")
        return self._name

    def _call(self, method: str, *args: Any) -> Any:
        return self._get(self.actor.call.remote(self._bound(), method, *args))

    def _open(self, name: str, dim: int, create: bool) -> bool:
        opened = bool(self._get(self.actor.open.remote(name, dim, create)))
        self._name = name if opened else None
        return opened

    def _upsert_points(self, points: Sequence[Point]) -> None:
        self._call("_upsert_points", list(points))

    def _retrieve(self, ids: Sequence[str], fields: list[str] | None = None) -> list[Row]:
        rows: list[Row] = self._call("_retrieve", list(ids), fields)
        return rows

    def _video_vectors(self, ids: Sequence[str]) -> dict[str, FloatArray]:
        vectors: dict[str, FloatArray] = self._call("_video_vectors", list(ids))
        return vectors

    def _scroll(
        self,
        flt: Filter,
        fields: list[str] | None,
        offset: str | None,
        limit: int,
        exclude: Filter = (),
    ) -> tuple[list[Row], str | None]:
        page: tuple[list[Row], str | None] = self._call(
            "_scroll", flt, fields, offset, limit, exclude
        )
        return page

    def _query(
        self, q: FloatArray, limit: int, offset: int, flt: Filter, with_frames: bool
    ) -> list[Row]:
        rows: list[Row] = self._call("_query", q, limit, offset, flt, with_frames)
        return rows

    def _set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        self._call("_set_payload", list(ids), payload)

    def _delete_points(self, ids: Sequence[str]) -> None:
        self._call("_delete_points", list(ids))

    def _count_points(self, flt: Filter = ()) -> int:
        return int(self._call("_count_points", flt))

    def _aliases(self) -> dict[str, str]:
        aliases: dict[str, str] = self._get(self.actor.root_call.remote("_aliases"))
        return aliases

    def _collection_exists(self, name: str) -> bool:
        return bool(self._get(self.actor.root_call.remote("_collection_exists", name)))

    def _switch_alias(self, alias: str, collection: str, previous: str | None) -> None:
        self._get(self.actor.root_call.remote("_switch_alias", alias, collection, previous))

    def _retrieve_with_frames(self, ids: Sequence[str]) -> list[Row]:
        rows: list[Row] = self._call("_retrieve_with_frames", list(ids))
        return rows

    def _close(self) -> None:
        self._name = None


def _forward(method: str) -> Any:
    def call(self: ActorVideoStore, *args: Any) -> Any:
        return self._call(method, *args)

    call.__name__ = method
    return call


# A primitive added to VideoStore later is forwarded as it is (same arguments).
for _method in PRIMITIVES - set(vars(ActorVideoStore)):
    setattr(ActorVideoStore, _method, _forward(_method))
ActorVideoStore.__abstractmethods__ = frozenset()


# ---- opening a store from a process that may not be on Ray ---------------------------------


def open_store_or_owner(
    qdrant_path: str | None,
    qdrant_url: str | None,
    api_key: str | None,
    collection: str,
    ray_address: str | None = None,
) -> VideoStore:
    """A store bound to ``collection`` for a reader such as ``adaclip ls``: the folder
    itself when it is free, else its store actor (on the cluster at ``ray_address`` or
    ``RAY_ADDRESS``).

    Raises:
        LookupError: no such collection.
        RuntimeError: the folder is held and no store actor can be reached.
    """
    from pipelines.store import open_store

    store = open_store(qdrant_path, qdrant_url, api_key)
    try:
        store.open_collection(collection)
        return store
    except RuntimeError as err:
        store.close()
        if "already open" not in str(err):
            raise
        held = err
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if not ray_is_initialized():
        if not address:
            raise RuntimeError(
                f"{held}; if a store actor owns it, pass --ray-address of its Ray cluster"
            )
        import ray

        ray.init(address=address, log_to_driver=False)
    shared = shared_store(qdrant_path, create=False)
    if shared is None:
        raise RuntimeError(f"{held}; and no store actor owns it on the Ray cluster")
    shared.open_collection(collection)
    return shared


# ---- adaclip store ------------------------------------------------------------------------


class StoreAdminSettings(StoreSettings):
    """``adaclip store status|stop``: the store actors of a Ray cluster."""

    action: Literal["status", "stop"] = Field(
        "status",
        description="status: list the store actors (folder, collections, uptime); stop: "
        "flush and close the store of --qdrant-path (or every one with --all) and end its "
        "actor",
    )
    all: bool = Field(False, description="with stop: every store actor of the cluster")
    ray_address: str | None = Field(
        None, description="Ray cluster address (default: RAY_ADDRESS, else auto)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip store`` and ``python -m pipelines.store.actor``.

    Exit codes: 0 done, 1 no store actor to stop, 2 no Ray cluster to connect to.
    """
    import json

    import ray

    args = list(argv or [])
    if args and args[0] in ("status", "stop"):  # ``adaclip store stop`` reads naturally
        args = ["--action", args[0], *args[1:]]
    settings = parse_settings(StoreAdminSettings, args, "adaclip store")
    try:
        ray.init(address=settings.ray_address or "auto", log_to_driver=False)
    except ConnectionError as err:
        print(f"adaclip store: no Ray cluster to connect to: {err}", file=sys.stderr)
        return 2
    if settings.action == "status":
        for name, handle in list_store_actors():
            print(json.dumps({"actor": name, **ray.get(handle.status.remote())}))
        return 0
    targets = list_store_actors()
    if not settings.all:
        wanted = actor_name(settings.qdrant_path)
        targets = [(name, handle) for name, handle in targets if name == wanted]
    if not targets:
        print(
            f"adaclip store: no store actor owns {store_folder(settings.qdrant_path)}",
            file=sys.stderr,
        )
        return 1
    for name, handle in targets:
        closed = stop_store_actor(handle)
        print(f"stopped {name}: flushed and closed {', '.join(closed) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
