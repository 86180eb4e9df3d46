"""The index job's input as a Ray Data stream: listing rows (uri, video_id, etag, size_bytes).

Nothing here runs on the driver except planning: the driver never holds the listing.

- A bucket prefix or a local folder is split into key ranges by the first character after
  the prefix (:func:`key_ranges`); each range is one read task of :class:`ListingDatasource`
  that lists its keys page by page (``ListObjectsV2`` with ``StartAfter``) and yields one
  small block per page, so decoding starts while the bucket is still being listed and a
  lost task redoes one range.
- A manifest is read with Ray Data's own readers: CSV, JSON lines or Parquet with a ``uri``
  column and optional ``etag`` and ``size`` columns (S3 Inventory's shape; no request per
  object when both are given), or a text file of one URI per line. Entries without an etag
  are stat'ed (S3 HEAD) in parallel threads inside the pipeline; an entry that cannot be
  stat'ed becomes a failure row (stage ``list``) instead of stopping the job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.object_fetch import (
    FetchError,
    ObjectFetcher,
    ObjectNotFoundError,
    has_scheme,
    is_s3_uri,
    local_path,
    split_s3_uri,
)
from pipelines.sources import (
    VIDEO_EXTENSIONS,
    SourceError,
    VideoObject,
    list_folder_range,
    list_frame_folders,
    list_s3_range_pages,
    probe_s3_prefix,
)

LISTING_COLUMNS = ("uri", "video_id", "etag", "size_bytes")
TABLE_MANIFESTS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
# First characters that split a key space into ranges, in S3's (UTF-8 binary) order.
SPLIT_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEAD_THREADS = 16  # parallel HEADs per manifest task
LISTING_TASK_CPUS = 0.1  # listing waits on the network

KeyRange = tuple[str | None, str | None]


def key_ranges(shards: int) -> list[KeyRange]:
    """``shards`` ranges ``[lo, hi)`` that cover every key, split at first characters."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    count = min(shards, len(SPLIT_ALPHABET) + 1) - 1
    step = len(SPLIT_ALPHABET) / (count + 1) if count else 0
    cuts = [SPLIT_ALPHABET[int(round((i + 1) * step)) - 1] for i in range(count)]
    cuts = sorted(set(cuts))
    bounds: list[str | None] = [None, *cuts, None]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def to_block(videos: Sequence[VideoObject]) -> pa.Table:
    """Listing rows as an Arrow block."""
    return pa.table(
        {
            "uri": pa.array([v.uri for v in videos], pa.string()),
            "video_id": pa.array([v.video_id for v in videos], pa.string()),
            "etag": pa.array([v.etag for v in videos], pa.string()),
            "size_bytes": pa.array([v.size_bytes for v in videos], pa.int64()),
        }
    )


def _chunks(videos: Iterable[VideoObject], size: int) -> Iterator[list[VideoObject]]:
    chunk: list[VideoObject] = []
    for video in videos:
        chunk.append(video)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class SourceSpec:
    """What the index job lists; plain, picklable settings."""

    source: str
    kind: str  # "s3" | "folder" | "file" | "frames" | "manifest"
    s3_endpoint_url: str | None = None
    page_size: int = 1000
    shards: int = 16

    @property
    def prune_prefix(self) -> str | None:
        """The directory prefix of every URI this source lists (None: a manifest or a file)."""
        if self.kind == "s3":
            bucket, prefix = split_s3_uri(self.source)
            prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
            return f"s3://{bucket}/{prefix}"
        if self.kind in ("folder", "frames"):
            return str(local_path(self.source).expanduser().resolve()) + "/"
        return None


def resolve_source(
    source: str,
    *,
    frames_dir: bool = False,
    s3_endpoint_url: str | None = None,
    page_size: int = 1000,
    shards: int = 16,
) -> SourceSpec:
    """Classify ``source`` and check it exists (one cheap request for a bucket).

    Raises:
        SourceError: missing, unreadable (with the storage reason) or unsupported.
    """

    def spec(kind: str) -> SourceSpec:
        return SourceSpec(source, kind, s3_endpoint_url, page_size, shards)

    if frames_dir:
        if not local_path(source).expanduser().is_dir():
            raise SourceError(f"frames folder {source} does not exist or is not a folder")
        return spec("frames")
    if is_s3_uri(source):
        try:
            split_s3_uri(source)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        probe_s3_prefix(source, s3_endpoint_url)
        return spec("s3")
    if has_scheme(source) and not source.startswith("file://"):
        raise SourceError(f"unsupported source scheme: {source!r} (use s3://, a path or a file)")
    path = local_path(source).expanduser()
    if path.is_dir():
        return spec("folder")
    if path.is_file():
        return spec("file" if path.suffix.lower() in VIDEO_EXTENSIONS else "manifest")
    raise SourceError(f"source not found: {source}")


def _read_range(spec: SourceSpec, key_range: KeyRange) -> Iterator[pa.Table]:
    """One read task: the videos of one key range, one block per page."""
    if spec.kind == "s3":
        for page in list_s3_range_pages(
            spec.source, key_range, s3_endpoint_url=spec.s3_endpoint_url, page_size=spec.page_size
        ):
            if page:
                yield to_block(page)
        return
    if spec.kind == "frames":
        videos: Iterable[VideoObject] = list_frame_folders(spec.source, key_range=key_range)
    elif spec.kind == "file":
        path = local_path(spec.source).expanduser().resolve()
        videos = list_folder_range(path.parent, key_range=(path.name, path.name + "\0"))
    else:
        videos = list_folder_range(spec.source, key_range=key_range)
    for chunk in _chunks(videos, spec.page_size):
        yield to_block(chunk)


def listing_datasource(spec: SourceSpec) -> Any:
    """A :class:`ray.data.Datasource` whose read tasks list ``spec``'s key ranges (built here
    so that this module imports without Ray)."""
    from functools import partial

    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    ranges = key_ranges(spec.shards) if spec.kind != "file" else [(None, None)]

    class _Listing(Datasource):
        def get_name(self) -> str:
            return "ListVideos"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(partial(_read_range, spec, r), meta) for r in ranges]

    return _Listing()


def listing_dataset(spec: SourceSpec, on_driver_node: bool = True, failures: Any = None) -> Any:
    """The listing rows of ``spec`` as a streaming Ray Data dataset.

    Args:
        spec: what to list.
        on_driver_node: read local folders and local manifests on the driver's node (their
            paths are the driver's), through its ``node:<ip>`` resource.
        failures: a ``FailureReporter`` for manifest entries that cannot be stat'ed.
    """
    import ray

    remote_args: dict[str, Any] = {"num_cpus": LISTING_TASK_CPUS}
    if spec.kind != "s3" and not is_s3_uri(spec.source) and on_driver_node:
        ip = ray.util.get_node_ip_address()
        remote_args["resources"] = {f"node:{ip}": 0.001}
    if spec.kind != "manifest":
        return ray.data.read_datasource(listing_datasource(spec), **remote_args)
    return _manifest_dataset(spec, remote_args, failures)


def _manifest_dataset(spec: SourceSpec, remote_args: dict[str, Any], failures: Any) -> Any:
    import ray

    path = str(local_path(spec.source).expanduser().resolve())
    fmt = TABLE_MANIFESTS.get(Path(path).suffix.lower())
    if fmt == "csv":
        ds = ray.data.read_csv(path, **remote_args)
    elif fmt == "json":
        ds = ray.data.read_json(path, file_extensions=None, **remote_args)
    elif fmt == "parquet":
        ds = ray.data.read_parquet(path, **remote_args)
    else:
        ds = ray.data.read_text(path, **remote_args).map_batches(
            _text_lines_to_uris, batch_format="pyarrow", **remote_args
        )
    return ds.map_batches(
        ManifestEntries,
        fn_constructor_args=(str(Path(path).parent), spec.s3_endpoint_url, failures),
        batch_size=256,
        batch_format="pyarrow",
        **remote_args,
    )


def _text_lines_to_uris(table: pa.Table) -> pa.Table:
    lines = [str(x).strip() for x in table.column("text").to_pylist()]
    return pa.table({"uri": [x for x in lines if x and not x.startswith("#")]})


def manifest_columns(table: pa.Table) -> tuple[list[str], list[str | None], list[int | None]]:
    """(uri, etag or None, size or None) of a manifest block; ``SourceError`` without ``uri``."""
    names = set(table.column_names)
    if "uri" not in names:
        raise SourceError(f"a table manifest needs a 'uri' column (found {sorted(names)})")
    n = table.num_rows
    uris = [str(u).strip() for u in table.column("uri").to_pylist()]
    etags = table.column("etag").to_pylist() if "etag" in names else [None] * n
    size_col = "size" if "size" in names else "size_bytes" if "size_bytes" in names else None
    sizes = table.column(size_col).to_pylist() if size_col else [None] * n
    return (
        uris,
        [None if e is None or str(e) == "" else str(e).strip('"') for e in etags],
        [None if s is None else int(s) for s in sizes],
    )


class ManifestEntries:
    """Ray Data UDF: manifest rows -> listing rows; missing etags or sizes are stat'ed
    (S3 HEAD) in parallel threads, and entries that cannot be become failure rows.

    Args:
        base: folder that relative local paths are relative to (the manifest's).
        s3_endpoint_url: S3-compatible endpoint, ``None`` for AWS.
        failures: a ``FailureReporter`` (or None: bad entries are dropped silently).
    """

    def __init__(self, base: str, s3_endpoint_url: str | None, failures: Any = None) -> None:
        self.base = Path(base)
        self.fetcher = ObjectFetcher(s3_endpoint_url)
        self.failures = failures

    def entry(self, uri: str, etag: str | None, size: int | None) -> VideoObject:
        if is_s3_uri(uri):
            _, key = split_s3_uri(uri)
            if not key or key.endswith("/"):
                raise FetchError(uri, "not an object URI", reason="bad_uri")
            stem = PurePosixPath(key).stem
        elif has_scheme(uri) and not uri.startswith("file://"):
            raise FetchError(uri, "unsupported URI scheme", reason="bad_uri")
        else:
            path = local_path(uri).expanduser()
            uri = os.path.normpath(path if path.is_absolute() else self.base / path)
            stem = Path(uri).stem
            if (etag is None or size is None) and not Path(uri).is_file():
                raise ObjectNotFoundError(uri, "no such file")
        if etag is None or size is None:
            stat = self.fetcher.stat(uri)
            etag, size = etag or stat.etag, stat.size_bytes if size is None else size
        return VideoObject(uri, int(size), etag, stem)

    def __call__(self, table: pa.Table) -> pa.Table:
        from pipelines.embed import failure_row

        uris, etags, sizes = manifest_columns(table)
        seen: set[str] = set()
        rows = [(u, e, s) for u, e, s in zip(uris, etags, sizes, strict=True) if u]
        with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
            results = list(pool.map(lambda r: self._try(*r), rows))
        videos, bad = [], []
        for (uri, _, _), result in zip(rows, results, strict=True):
            if isinstance(result, VideoObject):
                if result.uri not in seen:  # duplicates within a block are listed once
                    seen.add(result.uri)
                    videos.append(result)
            else:
                bad.append(failure_row(uri, "list", result))
        if bad and self.failures is not None:
            self.failures.record(bad)
        return to_block(videos)

    def _try(self, uri: str, etag: str | None, size: int | None) -> VideoObject | FetchError:
        try:
            return self.entry(uri, etag, size)
        except FetchError as err:
            return err


def empty_listing_batch() -> dict[str, np.ndarray]:
    """The listing columns with no rows."""
    return {
        "uri": np.array([], dtype=object),
        "video_id": np.array([], dtype=object),
        "etag": np.array([], dtype=object),
        "size_bytes": np.array([], dtype=np.int64),
    }
