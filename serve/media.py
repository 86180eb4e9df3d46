"""Where a browser can fetch an indexed video: presigned s3 URLs and a confined local route.

Local videos are indexed under their absolute path; the server serves only those under its
`media_root`, at `/media/<path relative to the root>`. `resolve_media_path` is the single
gate of that route: no absolute paths, no `..`, no NUL, symlinks resolved and checked
against the root, regular files with a video extension only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

logger = logging.getLogger(__name__)

MEDIA_ROUTE = "/media"
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".ogv", ".ogg", ".mpg", ".mpeg", ".ts"}
)
MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".ogv": "video/ogg",
    ".ogg": "video/ogg",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ts": "video/mp2t",
}


def resolve_media_path(root: Path, relative: str) -> Path | None:
    """The file `relative` names inside `root`, or None if it is not a servable video there.

    Args:
        root: the media root, already resolved (absolute, symlinks followed).
        relative: the URL path after `/media/`, percent-decoded.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or any(p in ("..", ".") for p in parts):
        return None
    try:
        path = (root / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        return None
    return path


def media_signing_key(api_key: str | None) -> bytes | None:
    """The HMAC key of signed media URLs, derived from the API key (replicas sharing the key
    accept each other's URLs; the API key itself never appears in a URL)."""
    if not api_key:
        return None
    return hashlib.sha256(b"adaclip media url\n" + api_key.encode()).digest()


def media_signature(key: bytes, path: str, expires: int) -> str:
    """HMAC-SHA256 over the (percent-decoded) app path and the expiry time, hex."""
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def valid_media_signature(
    key: bytes, path: str, expires: str, signature: str, now: float | None = None
) -> bool:
    """Whether `signature` signs `path` until `expires` (unix seconds) and has not expired."""
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(media_signature(key, path, int(expires)), signature)


class MediaResolver:
    """Turns an indexed URI into a URL a browser can play, or None.

    Args:
        media_root: local folder served at `/media` (None: local videos are not served).
        s3_endpoint_url: S3-compatible endpoint for presigned URLs.
        presign_expires_s: lifetime of presigned and signed URLs.
        signing_key: HMAC key of local media URLs (None: unsigned URLs, for an open API).
    """

    def __init__(
        self,
        media_root: str | os.PathLike[str] | None = None,
        s3_endpoint_url: str | None = None,
        presign_expires_s: int = 3600,
        signing_key: bytes | None = None,
    ) -> None:
        self.signing_key = signing_key
        self.root = Path(media_root).expanduser().resolve() if media_root else None
        self.s3_endpoint_url = s3_endpoint_url
        self.presign_expires_s = presign_expires_s
        self._s3: Any = None
        self._s3_lock = threading.Lock()

    def media_url(self, uri: str, base: str = "") -> str | None:
        """A playable URL for `uri`; `base` is the app's root path for local media."""
        if uri.startswith("s3://"):
            return self._presign(uri)
        if uri.startswith(("http://", "https://")):
            return uri
        local = self._local_relative(uri)
        if local is None:
            return None
        return self.signed(
            f"{base}{MEDIA_ROUTE}/{quote(local, safe='/')}", f"{MEDIA_ROUTE}/{local}"
        )

    def signed(self, url: str, path: str) -> str:
        """`url` (the app path `path` behind `base`) with an expiry and an HMAC signature
        when URLs are signed (an API key is set); unchanged otherwise."""
        if self.signing_key is None:
            return url
        expires = int(time.time()) + self.presign_expires_s
        signature = media_signature(self.signing_key, path, expires)
        return f"{url}?expires={expires}&sig={signature}"

    def frame_urls(self, uri: str, video_id: str, count: int, base: str = "") -> list[str]:
        """URLs of a local video's kept-frame thumbnails (`/videos/{id}/frames/{i}.jpg`),
        signed like media URLs; none for a video the server cannot read."""
        if self.local_path(uri) is None:
            return []
        quoted = quote(video_id, safe="")
        return [
            self.signed(
                f"{base}/videos/{quoted}/frames/{i}.jpg", f"/videos/{video_id}/frames/{i}.jpg"
            )
            for i in range(count)
        ]

    def local_path(self, uri: str) -> Path | None:
        """The file of an indexed local `uri` when it lies under the media root (the same
        confinement as `/media`), else None."""
        relative = self._local_relative(uri)
        return None if relative is None else self.local_file(relative)

    def local_file(self, relative: str) -> Path | None:
        """The file behind `/media/<relative>`, or None (not found, outside the root...)."""
        if self.root is None:
            return None
        return resolve_media_path(self.root, relative)

    def _local_relative(self, uri: str) -> str | None:
        if self.root is None:
            return None
        if uri.startswith("file://"):
            uri = unquote(urlsplit(uri).path)
        elif "://" in uri:
            return None
        path = Path(uri)
        if not path.is_absolute():
            return None
        try:
            relative = path.resolve().relative_to(self.root)
        except (OSError, ValueError):
            return None
        return relative.as_posix()

    def _presign(self, uri: str) -> str | None:
        from pipelines.object_fetch import s3_client, split_s3_uri

        try:
            bucket, key = split_s3_uri(uri)
            with self._s3_lock:
                if self._s3 is None:
                    self._s3 = s3_client(self.s3_endpoint_url)
            url: str = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": bucket, "Key": key},
                ExpiresIn=self.presign_expires_s,
            )
            return url
        except Exception as err:  # no credentials, bad URI: the hit stays, unplayable
            logger.warning("cannot presign %s: %s", uri, err)
            return None
