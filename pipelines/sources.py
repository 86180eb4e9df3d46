"""Object-storage sources of the data plane: listing videos, copying folders, presigned URLs.

A source is ``s3://bucket/prefix`` (any S3-compatible store through ``s3_endpoint_url``), a
local folder, or a manifest file (one URI per line). :func:`list_videos` turns it into a
deterministic stream of :class:`VideoObject` rows whose ``(uri, etag)`` the incremental
index compares before anything is downloaded. Fetching single objects, with retries and
error classification, lives in :mod:`pipelines.object_fetch` and is re-exported here.

Credentials always come from boto3's standard chain; nothing here logs them.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import botocore.exceptions as bce
from boto3.exceptions import S3UploadFailedError

from pipelines.object_fetch import (
    AccessDeniedError,
    FetchError,
    ObjectChangedError,
    ObjectFetcher,
    ObjectNotFoundError,
    ObjectStat,
    TransientStorageError,
    classify_error,
    has_scheme,
    is_s3_uri,
    local_etag,
    local_path,
    s3_client,
    split_s3_uri,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "AccessDeniedError",
    "FetchError",
    "ObjectChangedError",
    "ObjectFetcher",
    "ObjectNotFoundError",
    "ObjectStat",
    "SourceError",
    "TransientStorageError",
    "VideoObject",
    "classify_error",
    "download_folder",
    "is_s3_uri",
    "in_key_range",
    "list_folder_objects",
    "list_folder_range",
    "list_s3_range_pages",
    "list_videos",
    "probe_s3_prefix",
    "presigned_url",
    "s3_client",
    "split_s3_uri",
    "upload_folder",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".flv",
        ".wmv",
        ".3gp",
    }
)
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # SigV4 limit


class SourceError(Exception):
    """A source cannot be listed or copied: missing, unreadable, malformed or unsupported."""


@dataclass(frozen=True)
class VideoObject:
    """One listed video.

    Attributes:
        uri: ``s3://bucket/key``, or the absolute path of a local file (no ``file://``).
        size_bytes: object size.
        etag: S3 ETag without quotes; for local files ``f"{st_mtime_ns:x}-{st_size:x}"``,
            a cheap change detector (see :func:`pipelines.object_fetch.local_etag`).
        video_id: the file name without its extension.
    """

    uri: str
    size_bytes: int
    etag: str
    video_id: str


def list_videos(
    source: str,
    *,
    s3_endpoint_url: str | None = None,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    limit: int | None = None,
    page_size: int = 1000,
    on_missing: Literal["error", "skip"] = "error",
) -> Iterator[VideoObject]:
    """List the videos of a source, in a deterministic order.

    Args:
        source: ``s3://bucket/prefix`` (the prefix is a folder: ``videos`` means
            ``videos/``), a local folder (recursive), a single local video file, or a
            manifest file: one URI per line, ``s3://...`` or a local path (relative to the
            manifest's folder); blank lines and lines starting with ``#`` are skipped,
            duplicates are listed once, and entries are not filtered by extension.
        s3_endpoint_url: S3-compatible endpoint, ``None`` for AWS.
        extensions: file extensions to keep (case-insensitive) for buckets and folders.
        limit: stop after this many videos.
        page_size: keys per ``ListObjectsV2`` request.
        on_missing: a manifest entry that does not exist raises (``error``) or is logged
            and skipped (``skip``).

    Returns:
        An iterator of :class:`VideoObject`: S3 keys in the store's (lexicographic) order,
        local files sorted by path components.

    Raises:
        SourceError: the source does not exist, cannot be read, or is malformed. A missing
            local source or a malformed URI raises at call time; S3 problems on first use.
    """
    exts = _normalise_exts(extensions)
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    videos: Iterator[VideoObject]
    if is_s3_uri(source):
        bucket, prefix = _split(source)
        videos = _list_s3(bucket, _folder_prefix(prefix), s3_endpoint_url, exts, page_size)
    elif has_scheme(source) and not source.startswith("file://"):
        raise SourceError(f"unsupported source scheme: {source!r} (use s3://, a path or a file)")
    else:
        path = local_path(source).expanduser()
        if path.is_dir():
            videos = _list_folder(path.resolve(), exts)
        elif path.is_file() and path.suffix.lower() in exts:
            videos = iter([_local_video(path.resolve())])
        elif path.is_file():
            videos = _list_manifest(path.resolve(), ObjectFetcher(s3_endpoint_url), on_missing)
        else:
            raise SourceError(f"source not found: {source}")
    return itertools.islice(videos, limit)


def _normalise_exts(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _split(uri: str) -> tuple[str, str]:
    try:
        return split_s3_uri(uri)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


def _folder_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _storage_error(action: str, uri: str, exc: Exception) -> SourceError:
    reason = classify_error(exc) or "error"
    return SourceError(f"cannot {action} {uri} ({reason}): {exc}")


def _iter_s3_pages(
    client: Any,
    bucket: str,
    prefix: str,
    page_size: int,
    start_after: str | None = None,
    stop_at: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The objects under ``s3://bucket/prefix`` page by page, keys in
    ``(start_after, stop_at)`` when given (both are full keys)."""
    uri = f"s3://{bucket}/{prefix}"
    paginator = client.get_paginator("list_objects_v2")
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if start_after is not None:
        args["StartAfter"] = start_after
    pages = paginator.paginate(**args, PaginationConfig={"PageSize": page_size})
    try:
        for page in pages:
            objs = page.get("Contents", [])
            if stop_at is not None and objs and objs[-1]["Key"] >= stop_at:
                yield [o for o in objs if o["Key"] < stop_at]
                return
            yield objs
    except (bce.ClientError, bce.BotoCoreError) as exc:
        raise _storage_error("list", uri, exc) from exc


def _iter_s3_objects(
    client: Any, bucket: str, prefix: str, page_size: int
) -> Iterator[dict[str, Any]]:
    """Every object under ``s3://bucket/prefix``; SourceError if there are none."""
    found = False
    for page in _iter_s3_pages(client, bucket, prefix, page_size):
        for obj in page:
            found = True
            yield obj
    if not found:
        raise SourceError(f"no objects under s3://{bucket}/{prefix} (missing bucket or prefix?)")


def _videos_of_page(
    bucket: str, page: list[dict[str, Any]], exts: frozenset[str]
) -> list[VideoObject]:
    out = []
    for obj in page:
        key = PurePosixPath(obj["Key"])
        if obj["Key"].endswith("/") or key.suffix.lower() not in exts:
            continue
        etag = str(obj.get("ETag", "")).strip('"')
        out.append(VideoObject(f"s3://{bucket}/{key}", int(obj["Size"]), etag, key.stem))
    return out


def _list_s3(
    bucket: str, prefix: str, endpoint: str | None, exts: frozenset[str], page_size: int
) -> Iterator[VideoObject]:
    client = s3_client(endpoint)
    found = False
    for page in _iter_s3_pages(client, bucket, prefix, page_size):
        found = found or bool(page)
        yield from _videos_of_page(bucket, page, exts)
    if not found:
        raise SourceError(f"no objects under s3://{bucket}/{prefix} (missing bucket or prefix?)")


def list_s3_range_pages(
    source: str,
    key_range: tuple[str | None, str | None],
    *,
    s3_endpoint_url: str | None = None,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    page_size: int = 1000,
) -> Iterator[list[VideoObject]]:
    """The videos under ``s3://bucket/prefix`` whose key, after the prefix, lies in
    ``[lo, hi)`` (``None``: unbounded), one list per ``ListObjectsV2`` page.

    A key equal to ``prefix + lo`` itself is not listed (``StartAfter`` is exclusive); it has
    no extension after ``lo``, so it is never a video when ``lo`` is one character.

    Raises:
        SourceError: the listing failed (reason in the message: access_denied ...).
    """
    bucket, prefix = _split(source)
    prefix = _folder_prefix(prefix)
    lo, hi = key_range
    exts = _normalise_exts(extensions)
    client = s3_client(s3_endpoint_url)
    start = prefix + lo if lo else None
    stop = prefix + hi if hi else None
    for page in _iter_s3_pages(client, bucket, prefix, page_size, start, stop):
        yield _videos_of_page(bucket, page, exts)


def probe_s3_prefix(source: str, s3_endpoint_url: str | None = None) -> None:
    """One ``ListObjectsV2`` of one key: a clear error before any work when the bucket is
    missing, empty under the prefix, or refuses these credentials.

    Raises:
        SourceError: with the reason (``access_denied``, ``not_found``, ``no_credentials`` ...).
    """
    bucket, prefix = _split(source)
    prefix = _folder_prefix(prefix)
    uri = f"s3://{bucket}/{prefix}"
    try:
        resp = s3_client(s3_endpoint_url).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (bce.ClientError, bce.BotoCoreError) as exc:
        raise _storage_error("list", uri, exc) from exc
    if not resp.get("Contents"):
        raise SourceError(f"no objects under {uri} (missing bucket or prefix?)")


def list_folder_objects(uri: str, s3_endpoint_url: str | None = None) -> list[tuple[str, str, int]]:
    """(relative key, etag, size) of every object under an ``s3://`` folder, sorted.

    Raises:
        SourceError: nothing under the prefix, or S3 refused.
    """
    bucket, prefix = _split(uri)
    prefix = _folder_prefix(prefix)
    client = s3_client(s3_endpoint_url)
    return sorted(
        (o["Key"][len(prefix) :], str(o.get("ETag", "")).strip('"'), int(o.get("Size", 0)))
        for o in _iter_s3_objects(client, bucket, prefix, 1000)
        if not o["Key"].endswith("/")
    )


def _local_video(path: Path) -> VideoObject:
    st = path.stat()
    return VideoObject(str(path), st.st_size, local_etag(st), path.stem)


def in_key_range(name: str, key_range: tuple[str | None, str | None]) -> bool:
    """``lo <= name < hi`` (``None``: unbounded)."""
    lo, hi = key_range
    return (lo is None or name >= lo) and (hi is None or name < hi)


def list_folder_range(
    root: str | Path,
    key_range: tuple[str | None, str | None] = (None, None),
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
) -> Iterator[VideoObject]:
    """The videos under local folder ``root`` whose top-level entry name is in ``[lo, hi)``,
    in sorted path order (see :func:`list_videos`).

    Raises:
        SourceError: ``root`` is not a folder.
    """
    base = local_path(str(root)).expanduser()
    if not base.is_dir():
        raise SourceError(f"folder not found: {root}")
    return _list_folder(base.resolve(), _normalise_exts(extensions), key_range)


def _list_folder(
    root: Path,
    exts: frozenset[str],
    key_range: tuple[str | None, str | None] = (None, None),
) -> Iterator[VideoObject]:
    """Files under ``root`` in ``sorted(root.rglob(...))`` order, streamed one folder at a
    time; at the top level only entries whose name is in ``key_range``. Symlinked folders are
    not followed (no cycles); unreadable folders are skipped."""
    try:
        entries = sorted(
            (e for e in os.scandir(root) if in_key_range(e.name, key_range)),
            key=lambda e: e.name,
        )
    except OSError as exc:
        log.warning("skipping unreadable folder %s: %s", root, exc)
        return
    for entry in entries:
        path = root / entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _list_folder(path, exts)
        elif entry.is_file() and path.suffix.lower() in exts:
            yield _local_video(path)


def _list_manifest(
    manifest: Path, fetcher: ObjectFetcher, on_missing: Literal["error", "skip"]
) -> Iterator[VideoObject]:
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as lines:
        for lineno, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                video = _manifest_entry(line, manifest.parent, fetcher)
            except ObjectNotFoundError as exc:
                if on_missing != "skip":
                    raise SourceError(f"{manifest}:{lineno}: {exc}") from exc
                log.warning("%s:%d: skipping missing %s", manifest, lineno, exc.uri)
                continue
            except (FetchError, ValueError) as exc:
                raise SourceError(f"{manifest}:{lineno}: {exc}") from exc
            if video.uri not in seen:
                seen.add(video.uri)
                yield video


def _manifest_entry(line: str, base: Path, fetcher: ObjectFetcher) -> VideoObject:
    if is_s3_uri(line):
        _, key = split_s3_uri(line)
        if not key or key.endswith("/"):
            raise ValueError(f"not an object URI: {line}")
        stat = fetcher.stat(line)
        return VideoObject(line, stat.size_bytes, stat.etag, PurePosixPath(key).stem)
    if has_scheme(line) and not line.startswith("file://"):
        raise ValueError(f"unsupported URI scheme: {line}")
    path = local_path(line).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else base / path))
    if not path.is_file():
        raise ObjectNotFoundError(str(path), "no such file")
    return _local_video(path)


def _safe_join(root: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise SourceError(f"refusing to write object key outside the folder: {rel!r}")
    return root.joinpath(*parts)


def list_frame_folders(
    root: str | Path,
    *,
    limit: int | None = None,
    key_range: tuple[str | None, str | None] = (None, None),
) -> Iterator[VideoObject]:
    """Videos stored as frame folders (``root/<video_id>/image_00001.jpg ...``), sorted;
    only folders whose name is in ``key_range`` (``[lo, hi)``) when given.

    The etag is derived from the frame count and the newest frame's mtime, so adding or
    re-extracting frames makes the video index again.
    """
    base = Path(root)
    if not base.is_dir():
        raise SourceError(f"frames folder {root} does not exist or is not a folder")
    count = 0
    folders = (p for p in base.iterdir() if p.is_dir() and in_key_range(p.name, key_range))
    for folder in sorted(folders):
        if limit is not None and count >= limit:
            return
        frames = [f.stat() for f in folder.iterdir() if f.is_file()]
        if not frames:
            continue
        newest = max(st.st_mtime_ns for st in frames)
        yield VideoObject(
            uri=str(folder.resolve()),
            size_bytes=sum(st.st_size for st in frames),
            etag=f"frames-{len(frames):x}-{newest:x}",
            video_id=folder.name,
        )
        count += 1


def download_folder(uri: str, dest: str | Path, *, s3_endpoint_url: str | None = None) -> Path:
    """Copy the objects under an ``s3://`` prefix into ``dest`` (e.g. a checkpoint folder).

    A local folder is returned as it is and ``dest`` is not touched.

    Returns:
        The local folder holding the files.

    Raises:
        SourceError: nothing under the prefix, the folder does not exist, or S3 refused.
    """
    if not is_s3_uri(uri):
        path = local_path(uri).expanduser()
        if not path.is_dir():
            raise SourceError(f"folder not found: {uri}")
        return path
    bucket, prefix = _split(uri)
    prefix = _folder_prefix(prefix)
    client = s3_client(s3_endpoint_url)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for obj in _iter_s3_objects(client, bucket, prefix, 1000):
        rel = obj["Key"][len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # "folder" marker objects
        target = _safe_join(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, obj["Key"], str(target))
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise _storage_error("download", f"s3://{bucket}/{obj['Key']}", exc) from exc
    return dest


def upload_folder(local: str | Path, s3_uri: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Upload every file under ``local`` to the ``s3_uri`` prefix, keeping relative paths.

    Returns:
        The URIs written, sorted.
    """
    root = Path(local)
    if not root.is_dir():
        raise SourceError(f"folder not found: {local}")
    bucket, prefix = _split(s3_uri)
    prefix = _folder_prefix(prefix)
    client = s3_client(s3_endpoint_url)
    uris = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(root).as_posix()
        try:
            client.upload_file(str(path), bucket, key)
        except (bce.ClientError, bce.BotoCoreError, S3UploadFailedError) as exc:
            raise _storage_error("upload to", f"s3://{bucket}/{key}", exc) from exc
        uris.append(f"s3://{bucket}/{key}")
    return uris


def presigned_url(uri: str, *, expires_s: int = 3600, s3_endpoint_url: str | None = None) -> str:
    """A time-limited HTTPS GET URL for an S3 object (e.g. to play a search hit in a browser).

    Raises:
        ValueError: not an ``s3://`` object URI, or an expiry outside 1 s .. 7 days.
    """
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"not an object URI: {uri}")
    if not 0 < expires_s <= MAX_PRESIGN_EXPIRY_S:
        raise ValueError(f"expires_s must be in 1..{MAX_PRESIGN_EXPIRY_S}")
    client = s3_client(s3_endpoint_url)
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
    )
    return url
