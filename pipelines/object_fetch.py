"""Fetching single objects (``s3://`` or local) with error classification and retries.

The decode actors of the ingestion job hold one :class:`ObjectFetcher` each. It is built from
plain arguments, pickles without its boto3 client (created lazily in the worker) and yields a
seekable binary file: small S3 objects in memory, large ones spooled to a temp file on local
disk that is removed when the context exits, local files opened in place.

Errors become a :class:`FetchError` subclass carrying the ``uri`` and a short ``reason``
(``not_found``, ``access_denied``, ``transient``, ``changed``, ...) that failure reports count
by. Retries are botocore's: its "standard" retry mode re-sends a request after throttling,
5xx answers and connection errors before a response, with exponential backoff and jitter;
missing objects and permission errors are not retried. botocore does not retry a body whose
connection drops half-way, so the one retry written here resumes such a body with a ranged
GET pinned to the object's ETag (``If-Match``), never stitching two versions together.

Large objects (``ranged_min_bytes`` and up, when the caller knows the size from the
listing) are not downloaded at all: ``fetch`` yields a :class:`~pipelines.ranged_object.
RangedObject`, a seekable file over ranged GETs with read-ahead and the ETag pinned, and
the decoder reads only the header, the index and the GOPs of its N candidates. Below that
size one GET of the whole object costs less than the round trips of many ranges.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions as bce
import urllib3.exceptions
from botocore.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 bucket names: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "403",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)
TRANSIENT_HTTP_STATUS = frozenset({429, 500, 502, 503, 504})
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})  # a resumed GET's If-Match failed
# SSL errors are a botocore ConnectionError too, but retrying a bad certificate never helps.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    bce.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ProxyConnectionError,
    bce.IncompleteReadError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ConnectionRefusedError ...
    TimeoutError,
)


# ---- errors -------------------------------------------------------------------------------


class FetchError(Exception):
    """An object could not be fetched. ``reason`` is a short label for failure reports."""

    default_reason = "fetch_error"

    def __init__(
        self, uri: str, detail: str, *, reason: str | None = None, attempts: int = 1
    ) -> None:
        super().__init__(uri, detail)
        self.uri = uri
        self.detail = detail
        self.reason = reason or self.default_reason
        self.attempts = attempts

    def __str__(self) -> str:
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.uri}: {self.detail}{tries}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships exceptions between processes; keep the keyword-only fields.
        state = {"reason": self.reason, "attempts": self.attempts}
        return (type(self), (self.uri, self.detail), state)


class ObjectNotFoundError(FetchError):
    """The object (or its bucket, or the local file) does not exist. Never retried."""

    default_reason = "not_found"


class AccessDeniedError(FetchError):
    """The credentials may not read the object (or the local file is unreadable)."""

    default_reason = "access_denied"


class TransientStorageError(FetchError):
    """Throttling, 5xx or connection trouble that outlasted every retry."""

    default_reason = "transient"


class ObjectChangedError(FetchError):
    """The object was replaced while its body was being read (its ETag moved on)."""

    default_reason = "changed"


# ---- S3 basics ----------------------------------------------------------------------------


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def has_scheme(uri: str) -> bool:
    """True for ``scheme://...`` strings (``s3://``, ``file://``, ``https://`` ...)."""
    return bool(_SCHEME_RE.match(uri))


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/or/prefix`` into ``(bucket, key)``; the key may be empty.

    Raises:
        ValueError: not an ``s3://`` URI or an invalid bucket name.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid bucket name {bucket!r} in {uri!r}")
    return bucket, key


def s3_client(
    endpoint_url: str | None = None, *, max_attempts: int = 5, read_timeout_s: float = 60.0
) -> Any:
    """A boto3 S3 client from the standard credential chain (env, profile, IMDS/IRSA ...).

    Args:
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph, moto); path-style addressing is
            used with it. ``None`` for AWS.
        max_attempts: attempts per request, the first included (botocore's "standard" retry
            mode: throttling, 5xx and connection errors, exponential backoff with jitter).
        read_timeout_s: socket read timeout.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=read_timeout_s,
        tcp_keepalive=True,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # A session per client: boto3's default session is not thread-safe.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


# ---- classification -----------------------------------------------------------------------


def _client_error_code(exc: bce.ClientError) -> tuple[str, int | None]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def classify_error(exc: BaseException) -> str | None:
    """The failure reason of a storage exception, or ``None`` if it is not one.

    Returns one of ``not_found``, ``access_denied``, ``no_credentials`` (boto3's chain
    found none), ``transient``, ``changed`` (the ETag moved on), ``storage_error`` (another S3 error) or ``io_error`` (another local OS error).
    """
    if isinstance(exc, FetchError):
        return exc.reason
    if isinstance(exc, bce.ClientError):
        code, status = _client_error_code(exc)
        if code in NOT_FOUND_CODES or (not code and status == 404):
            return "not_found"
        if code in ACCESS_DENIED_CODES or (not code and status == 403):
            return "access_denied"
        if code in CHANGED_CODES or (not code and status == 412):
            return "changed"
        if code in TRANSIENT_CODES or status in TRANSIENT_HTTP_STATUS:
            return "transient"
        return "storage_error"
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return "no_credentials"
    if isinstance(exc, bce.SSLError):
        return "storage_error"
    if isinstance(exc, TRANSIENT_EXCEPTIONS):
        return "transient"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "access_denied"
    if isinstance(exc, OSError):
        return "io_error"
    if isinstance(exc, bce.BotoCoreError):
        return "storage_error"
    return None


_ERROR_TYPES: dict[str, type[FetchError]] = {
    "not_found": ObjectNotFoundError,
    "access_denied": AccessDeniedError,
    "no_credentials": AccessDeniedError,
    "transient": TransientStorageError,
    "changed": ObjectChangedError,
}


def to_fetch_error(exc: BaseException, uri: str, attempts: int = 1) -> FetchError | None:
    """Wrap a storage exception as the matching :class:`FetchError` (``None``: not storage)."""
    if isinstance(exc, FetchError):
        return exc
    reason = classify_error(exc)
    if reason is None:
        return None
    if isinstance(exc, bce.ClientError):
        code, status = _client_error_code(exc)
        detail = f"{code or status}: {exc.response.get('Error', {}).get('Message', '')}".rstrip()
    else:
        detail = f"{type(exc).__name__}: {exc}"
    cls = _ERROR_TYPES.get(reason, FetchError)
    return cls(uri, detail.rstrip(": "), reason=reason, attempts=attempts)


def _local_error(exc: OSError, uri: str) -> FetchError:
    err = to_fetch_error(exc, uri)
    assert err is not None  # every OSError has a reason
    return err


def backoff_delay(attempt: int, base_s: float, cap_s: float = 20.0) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d] where d = base * 2**(attempt-1)."""
    delay = min(cap_s, base_s * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


# ---- the fetcher --------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStat:
    size_bytes: int
    etag: str


def local_etag(st: os.stat_result) -> str:
    """A cheap change detector for a local file: mtime (ns) and size, in hex.

    Not a content hash: a rewrite with identical size and mtime goes unnoticed, and copying a
    file elsewhere changes it. It only has to tell the incremental index that a file changed.
    """
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def local_path(uri: str) -> Path:
    """The path of a local URI (plain path or ``file://`` URI)."""
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


class ObjectFetcher:
    """Fetches objects as seekable binary files; botocore retries requests, this resumes bodies.

    Every S3 request (GET, HEAD) goes through botocore's "standard" retry mode with
    ``max_retries + 1`` attempts. A body that breaks off while it is read (botocore cannot
    retry that: the response has already been returned) is resumed where it stopped with
    ``Range: bytes=<offset>-`` and ``If-Match: <etag>``, at most ``max_retries`` times per
    object; an object replaced meanwhile fails as :class:`ObjectChangedError`. A
    :class:`FetchError`'s ``attempts`` counts the HTTP requests this fetch sent, botocore's
    retries and the resuming GETs included.

    Args:
        s3_endpoint_url: S3-compatible endpoint, ``None`` for AWS.
        max_retries: retries of a request after its first attempt (botocore), and resumes of
            an interrupted body per object.
        spool_threshold_bytes: S3 objects larger than this go to a temp file, not memory.
        spool_dir: folder for those temp files (default: the system temp folder).
        backoff_base_s: delay before the first resume; doubles per resume, with jitter.
        client_factory: ``(endpoint_url, max_attempts) -> botocore S3 client``; must be
            picklable. Default :func:`s3_client`. Tests pass one that adds fault-injecting
            event hooks to a real client.
        chunk_bytes: read size of the body.
        ranged_min_bytes: objects of at least this size (as the caller's ``size_hint``
            says) are read through ranged GETs instead of downloaded; None: never.
        ranged_block_bytes: the ranged reader's block size and first read-ahead window.
    """

    def __init__(
        self,
        s3_endpoint_url: str | None = None,
        max_retries: int = 5,
        spool_threshold_bytes: int = 64 << 20,
        spool_dir: str | Path | None = None,
        backoff_base_s: float = 0.2,
        *,
        client_factory: Callable[[str | None, int], Any] | None = None,
        chunk_bytes: int = 1 << 20,
        ranged_min_bytes: int | None = 32 << 20,
        ranged_block_bytes: int = 256 << 10,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.s3_endpoint_url = s3_endpoint_url
        self.max_retries = max_retries
        self.spool_threshold_bytes = spool_threshold_bytes
        self.spool_dir = str(spool_dir) if spool_dir is not None else None
        self.backoff_base_s = backoff_base_s
        self.client_factory = client_factory or _standard_retry_client
        self.chunk_bytes = chunk_bytes
        self.ranged_min_bytes = ranged_min_bytes
        self.ranged_block_bytes = ranged_block_bytes
        self._client: Any = None
        self._lock = threading.Lock()
        self._sent = threading.local()  # .requests: HTTP requests of this thread's fetch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state.pop("_lock")
        state.pop("_sent")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._sent = threading.local()

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use in this process."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = self.client_factory(self.s3_endpoint_url, self.max_retries + 1)
                    # emitted once per attempt, botocore's retries included
                    client.meta.events.register("request-created.s3", self._count_request)
                    self._client = client
        return self._client

    def _count_request(self, **_: Any) -> None:
        self._sent.requests = getattr(self._sent, "requests", 0) + 1

    def _requests(self) -> int:
        return max(1, getattr(self._sent, "requests", 0))

    def _call(self, uri: str, op: Callable[[], T]) -> T:
        """Run one client call (botocore retries inside it); storage errors -> FetchError.

        Exceptions that are not storage errors propagate unchanged.
        """
        try:
            return op()
        except Exception as exc:
            err = to_fetch_error(exc, uri, attempts=self._requests())
            if err is None or err is exc:
                raise
            raise err from exc

    def stat(self, uri: str) -> ObjectStat:
        """Size and etag of an object (S3 HEAD, or ``os.stat`` for a local file)."""
        if not is_s3_uri(uri):
            try:
                st = local_path(uri).stat()
            except OSError as exc:
                raise _local_error(exc, uri) from exc
            return ObjectStat(st.st_size, local_etag(st))
        bucket, key = split_s3_uri(uri)
        self._sent.requests = 0
        head = self._call(uri, lambda: self.client.head_object(Bucket=bucket, Key=key))
        return ObjectStat(int(head["ContentLength"]), str(head["ETag"]).strip('"'))

    def reads_ranges(self, uri: str, size_hint: int | None) -> bool:
        """Whether :meth:`fetch` reads ``uri`` through ranged GETs rather than downloading it."""
        return (
            is_s3_uri(uri)
            and self.ranged_min_bytes is not None
            and size_hint is not None
            and size_hint >= self.ranged_min_bytes
        )

    @contextmanager
    def fetch(self, uri: str, size_hint: int | None = None) -> Iterator[BinaryIO]:
        """Open ``uri`` as a seekable binary file for the duration of the context.

        Args:
            uri: ``s3://`` URI or local path.
            size_hint: the object's size as listed, if known: from ``ranged_min_bytes`` on
                the file reads ranges on demand (:meth:`reads_ranges`).

        Raises:
            ObjectNotFoundError, AccessDeniedError, TransientStorageError,
            ObjectChangedError, FetchError.
        """
        if not is_s3_uri(uri):
            with self._open_local(uri) as f:
                yield f
            return
        spool: list[str] = []  # the temp file path, once created
        try:
            if self.reads_ranges(uri, size_hint):
                f = self._open_ranged(uri, spool)
            else:
                f = self._download(uri, spool)
            with f:
                yield f
        finally:
            for path in spool:
                with _suppress_oserror():
                    os.unlink(path)

    def _open_local(self, uri: str) -> BinaryIO:
        path = local_path(uri)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller's context closes it
        except OSError as exc:
            raise _local_error(exc, uri) from exc

    def _download(self, uri: str, spool: list[str]) -> BinaryIO:
        """GET the object into memory or into the spool file, resuming a broken body."""
        bucket, key = split_s3_uri(uri)
        self._sent.requests = 0
        resp = self._call(uri, lambda: self.client.get_object(Bucket=bucket, Key=key))
        if int(resp.get("ContentLength", 0)) <= self.spool_threshold_bytes:
            out: BinaryIO = io.BytesIO()
        else:
            out = self._spool_file(uri, spool)
        try:
            self._read_body(uri, resp, out)
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out

    def _open_ranged(self, uri: str, spool: list[str]) -> BinaryIO:
        """A :class:`RangedObject` over ``uri``; a whole download if ranges are ignored."""
        from pipelines.ranged_object import RangedObject, RangeNotSupported

        bucket, key = split_s3_uri(uri)
        self._sent.requests = 0
        try:
            return RangedObject.open(
                self.client,
                uri,
                bucket,
                key,
                block_bytes=self.ranged_block_bytes,
                max_retries=self.max_retries,
            )  # type: ignore[return-value]
        except RangeNotSupported as whole:
            log.info("%s: the endpoint ignores Range; downloading the object whole", uri)
            resp = whole.response
            out = (
                self._spool_file(uri, spool)
                if int(resp.get("ContentLength", 0)) > self.spool_threshold_bytes
                else io.BytesIO()
            )
            try:
                self._read_body(uri, resp, out)
                out.seek(0)
            except BaseException:
                out.close()
                raise
            return out

    def _read_body(self, uri: str, resp: dict[str, Any], out: BinaryIO) -> None:
        """Copy a GET's body into ``out``; where it breaks, GET the rest of the same ETag."""
        bucket, key = split_s3_uri(uri)
        size, etag = int(resp.get("ContentLength", 0)), str(resp.get("ETag", ""))
        resumes = 0
        while True:
            try:
                _copy_body(resp["Body"], out, self.chunk_bytes)
                return
            except Exception as exc:
                err = to_fetch_error(exc, uri, attempts=self._requests())
                if err is None or err is exc:
                    raise
                if not isinstance(err, TransientStorageError) or resumes >= self.max_retries:
                    raise err from exc
                cause = err.detail
            offset = out.tell()
            resumes += 1
            delay = backoff_delay(resumes, self.backoff_base_s)
            log.warning(
                "body of %s broke at byte %d of %d (resume %d/%d in %.2fs): %s",
                uri, offset, size, resumes, self.max_retries, delay, cause,
            )  # fmt: skip
            time.sleep(delay)
            rest = f"bytes={offset}-"
            resp = self._call(
                uri,
                partial(self.client.get_object, Bucket=bucket, Key=key, Range=rest, IfMatch=etag),
            )
            start = _range_start(resp.get("ContentRange"))
            if start is None:  # the endpoint ignored the Range: the whole object again
                out.seek(0)
                out.truncate()
            elif start != offset:
                resp["Body"].close()
                raise FetchError(uri, f"asked for bytes {offset}-, got {resp.get('ContentRange')}")

    def _spool_file(self, uri: str, spool: list[str]) -> BinaryIO:
        if self.spool_dir:
            os.makedirs(self.spool_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(
            prefix="adaclip-fetch-", suffix=Path(uri).suffix, dir=self.spool_dir
        )
        spool.append(path)
        return os.fdopen(fd, "w+b")


def _standard_retry_client(endpoint_url: str | None, max_attempts: int) -> Any:
    return s3_client(endpoint_url, max_attempts=max_attempts)


def _copy_body(body: Any, out: BinaryIO, chunk_bytes: int) -> None:
    try:
        while chunk := body.read(chunk_bytes):
            out.write(chunk)
    finally:
        body.close()


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes <start>-<end>/<size>`` header (None: absent)."""
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


@contextmanager
def _suppress_oserror() -> Iterator[None]:
    try:
        yield
    except OSError as exc:  # already gone, or a busy file on an odd filesystem
        log.debug("could not remove spool file: %s", exc)
