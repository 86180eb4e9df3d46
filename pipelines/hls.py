"""HLS folders: a ``.ts`` file beside an ``.m3u8`` playlist is a segment, not a video.

An HLS stream is a playlist (``index.m3u8``) and the few-second MPEG-TS segments it lists,
usually in one folder. Indexed one by one, its segments would become hundreds of
"videos" of a few seconds each, none of them the video a user searches for. The decision
here: a ``.ts`` object whose folder holds a ``.m3u8`` playlist is not indexed; it is reported
once (``failures.jsonl``, stage ``decode``, reason ``hls_segment``) and remembered at its etag
like any permanent failure, so the next run neither downloads nor reports it again. The
playlist itself is not a video extension. To index an HLS stream, index one file made from
it (``ffmpeg -i index.m3u8 -c copy video.mp4``). A ``.ts`` in a folder without a playlist
(a recording, a broadcast capture) is a video as before.

Whether a folder holds a playlist is asked once per folder and decode actor (one S3 listing
of the folder, a page at a time until a playlist shows up, or one local ``scandir``).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

from pipelines.object_fetch import is_s3_uri, local_path, split_s3_uri

log = logging.getLogger("adaclip.index")

PLAYLIST_SUFFIX = ".m3u8"
SEGMENT_SUFFIX = ".ts"


class HlsSegmentError(ValueError):
    """This ``.ts`` is a segment of an HLS playlist in its folder: not a video of its own."""

    reason = "hls_segment"


class HlsFolders:
    """Answers "is this ``.ts`` an HLS segment?" with one listing per folder (cached).

    Args:
        s3_client: a boto3 S3 client (None: only local folders are asked).
        max_folders: folders remembered (least recently used dropped beyond).
    """

    def __init__(self, s3_client: Any = None, max_folders: int = 10_000) -> None:
        self.s3_client = s3_client
        self.max_folders = max_folders
        self._known: OrderedDict[str, bool] = OrderedDict()
        self.listings = 0  # folders listed so far

    def is_segment(self, uri: str) -> bool:
        if not uri.lower().endswith(SEGMENT_SUFFIX):
            return False
        folder = uri.rsplit("/", 1)[0] + "/" if "/" in uri else "./"
        known = self._known.get(folder)
        if known is None:
            known = self._has_playlist(folder)
            self._known[folder] = known
            while len(self._known) > self.max_folders:
                self._known.popitem(last=False)
        self._known.move_to_end(folder)
        return known

    def _has_playlist(self, folder: str) -> bool:
        self.listings += 1
        if not is_s3_uri(folder):
            try:
                with os.scandir(local_path(folder)) as entries:
                    return any(e.name.lower().endswith(PLAYLIST_SUFFIX) for e in entries)
            except OSError:  # the fetch reports what is wrong with the file itself
                return False
        if self.s3_client is None:
            return False
        bucket, prefix = split_s3_uri(folder)
        try:
            pages = self.s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if str(obj["Key"]).lower().endswith(PLAYLIST_SUFFIX):
                        return True
        except Exception as err:  # no list permission, throttling: the fetch decides
            log.warning("could not list %s to look for an HLS playlist: %s", folder, err)
        return False
