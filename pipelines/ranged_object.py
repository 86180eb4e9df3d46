"""A seekable, read-only file over ranged S3 GETs, so a decoder reads only what it needs.

Decoding N candidate frames of a long video touches its header, its index (an MP4's
``moov``, at the start or at the end) and, per candidate, the bytes from the keyframe
before it to the frame: a small part of the file. :class:`RangedObject` gives PyAV a file
object whose reads become ``GET`` requests with ``Range: bytes=a-b`` and
``If-Match: <etag>``, the ETag of the first response pinned, so the frames never come from
two versions of an object (a replaced object fails as ``ObjectChangedError``).

Reads are served from a cache of fixed-size blocks. A miss fetches a window of blocks from
the missing one on: the window starts at ``block_bytes`` and doubles while reads run on
from where the last fetch ended (a decoder reading forward), up to ``max_window_bytes``; a
jump elsewhere (a seek) starts over with one block. Least recently used blocks are dropped
beyond ``cache_bytes``. ``bytes_fetched`` and ``requests`` count what the object cost.

Transient errors are botocore's to retry (the client's standard mode); a body that breaks
off mid-range is fetched again (``max_retries`` times per object).
"""

from __future__ import annotations

import io
import logging
import re
from collections import OrderedDict
from typing import Any

from pipelines.object_fetch import (
    FetchError,
    ObjectChangedError,
    TransientStorageError,
    to_fetch_error,
)

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes a-b/size`` -> (a, b, size); None when absent or malformed."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    a, b, size = match.groups()
    return int(a), int(b), None if size == "*" else int(size)


class RangedObject(io.RawIOBase):
    """A read-only, seekable view of one S3 object, fetched in ranges on demand.

    Build it with :meth:`open`, which sends the first ranged GET.

    Args:
        client: a boto3 S3 client.
        uri, bucket, key: the object.
        size: its size in bytes.
        etag: its ETag (quoted, as S3 returns it); every GET is pinned to it.
        block_bytes: cache block size, and the first read-ahead window.
        max_window_bytes: the largest read-ahead window of a forward-reading decoder.
        cache_bytes: blocks kept (least recently used dropped beyond).
        max_retries: re-fetches of a range whose body broke off.
    """

    def __init__(
        self,
        client: Any,
        uri: str,
        bucket: str,
        key: str,
        size: int,
        etag: str,
        *,
        block_bytes: int = 256 << 10,
        max_window_bytes: int = 8 << 20,
        cache_bytes: int = 64 << 20,
        max_retries: int = 3,
    ) -> None:
        super().__init__()
        if block_bytes < 1 or max_window_bytes < block_bytes:
            raise ValueError("need 1 <= block_bytes <= max_window_bytes")
        self.client, self.uri, self.bucket, self.key = client, uri, bucket, key
        self.size, self.etag = size, etag
        self.block_bytes, self.max_window_bytes = block_bytes, max_window_bytes
        self.max_blocks = max(2, cache_bytes // block_bytes)
        self.max_retries = max_retries
        self.bytes_fetched = 0
        self.requests = 0
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._next_block = -1  # the block after the last fetch: reading on from there
        self._window = block_bytes

    @classmethod
    def open(cls, client: Any, uri: str, bucket: str, key: str, **kwargs: Any) -> RangedObject:
        """Send the first ranged GET (its response gives the size and the ETag to pin).

        Raises:
            FetchError: the object cannot be read.
            RangeNotSupported: the endpoint answered the whole object (no Content-Range);
                its response is attached for the caller to read as a whole download.
        """
        first = int(kwargs.get("block_bytes", 256 << 10))
        try:
            resp = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{first - 1}")
        except Exception as exc:
            raise _fetch_error(exc, uri) from exc
        span = parse_content_range(resp.get("ContentRange"))
        if span is None or span[2] is None:
            raise RangeNotSupported(uri, resp)
        obj = cls(client, uri, bucket, key, span[2], str(resp["ETag"]), **kwargs)
        obj._store(0, obj._read_body(resp, span[1] - span[0] + 1))
        obj._next_block = obj._block_of(span[1]) + 1
        return obj

    # ---- io.RawIOBase ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        done = 0
        while done < want:
            index = self._block_of(self._pos)
            block = self._block(index)
            start = self._pos - index * self.block_bytes
            n = min(want - done, len(block) - start)
            view[done : done + n] = block[start : start + n]
            done += n
            self._pos += n
        return done

    # ---- blocks ------------------------------------------------------------------------------

    def _block_of(self, pos: int) -> int:
        return pos // self.block_bytes

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        if index == self._next_block:  # reading on: fetch ahead, further each time
            self._window = min(self._window * 2, self.max_window_bytes)
        else:
            self._window = self.block_bytes
        start = index * self.block_bytes
        end = min(self.size, start + self._window) - 1
        self._store(start, self._get_range(start, end))
        self._next_block = self._block_of(end) + 1
        return self._blocks[index]

    def _store(self, start: int, data: bytes) -> None:
        first = self._block_of(start)
        for i in range(0, len(data), self.block_bytes):
            self._blocks[first + i // self.block_bytes] = data[i : i + self.block_bytes]
            self._blocks.move_to_end(first + i // self.block_bytes)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def _get_range(self, start: int, end: int) -> bytes:
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.get_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    Range=f"bytes={start}-{end}",
                    IfMatch=self.etag,
                )
                span = parse_content_range(resp.get("ContentRange"))
                if span is None or span[0] != start:
                    resp["Body"].close()
                    raise FetchError(
                        self.uri, f"asked for bytes {start}-{end}, got {resp.get('ContentRange')}"
                    )
                return self._read_body(resp, end - start + 1)
            except Exception as exc:
                err = _fetch_error(exc, self.uri)
                if not isinstance(err, TransientStorageError) or attempt >= self.max_retries:
                    raise err from exc
                log.warning("range %d-%d of %s broke off, again: %s", start, end, self.uri, err)
        raise AssertionError("unreachable")

    def _read_body(self, resp: dict[str, Any], expected: int) -> bytes:
        self.requests += 1
        try:
            data = bytes(resp["Body"].read())
        finally:
            resp["Body"].close()
        self.bytes_fetched += len(data)
        if len(data) != expected:
            raise TransientStorageError(self.uri, f"short body: {len(data)} of {expected} bytes")
        return data


class RangeNotSupported(Exception):
    """The endpoint ignored the Range header: ``response`` is a whole-object GET."""

    def __init__(self, uri: str, response: dict[str, Any]) -> None:
        super().__init__(f"{uri}: the endpoint ignored the Range header")
        self.response = response


def _fetch_error(exc: BaseException, uri: str) -> FetchError:
    if isinstance(exc, FetchError):
        return exc
    err = to_fetch_error(exc, uri)
    if err is None:
        return FetchError(uri, f"{type(exc).__name__}: {exc}")
    if err.reason == "changed":
        return ObjectChangedError(uri, "the object was replaced while it was read")
    return err
