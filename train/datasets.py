"""Annotation files of the paper's schema -> video records with their captions.

Schema (METHOD.md section 10): ``{video_id: {"extension": str, "sentences": [str],
"timestamps": [[s, e]] (optional), "duration": float (optional)}}``.

- ``msrvtt`` and ``synthetic``: every sentence is a caption. Training draws one caption
  per video per epoch (:func:`sample_caption`); evaluation uses every caption as a query.
- ``didemo`` and ``activitynet``: paragraph retrieval, a video's sentences joined with
  spaces are its one caption.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAGRAPH_DATASETS = frozenset({"didemo", "activitynet"})
CAPTION_DATASETS = frozenset({"msrvtt", "synthetic"})


class AnnotationError(ValueError):
    """An annotation file is missing or does not follow the schema."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split and the captions that describe it."""

    video_id: str
    extension: str
    captions: tuple[str, ...]  # >= 1; a paragraph dataset has exactly one
    duration: float | None = None

    @property
    def filename(self) -> str:
        return f"{self.video_id}.{self.extension}" if self.extension else self.video_id


def paragraph(sentences: Sequence[str]) -> str:
    """DiDeMo / ActivityNet query: the sentences stripped and joined with single spaces."""
    return " ".join(s.strip() for s in sentences if s.strip())


def parse_annotations(data: dict[str, Any], dataset: str, source: str = "") -> list[VideoRecord]:
    """Turn a parsed annotation object into records, sorted by video id.

    Args:
        data: the JSON object of an annotation file.
        dataset: ``msrvtt``, ``synthetic`` (captions) or ``didemo``, ``activitynet``
            (paragraphs).
        source: file name for error messages.

    Raises:
        AnnotationError: an entry breaks the schema or the dataset kind is unknown.
    """
    if dataset not in PARAGRAPH_DATASETS | CAPTION_DATASETS:
        raise AnnotationError(f"unknown dataset kind {dataset!r}")
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: expected an object keyed by video id")
    records = []
    for video_id in sorted(data):
        entry = data[video_id]
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise AnnotationError(f"{source}: {video_id!r} has no list of sentences")
        if dataset in PARAGRAPH_DATASETS:
            captions: tuple[str, ...] = (paragraph(sentences),)
        else:
            captions = tuple(s.strip() for s in sentences)
        captions = tuple(c for c in captions if c)
        if not captions:
            raise AnnotationError(f"{source}: {video_id!r} has only empty sentences")
        duration = entry.get("duration")
        records.append(
            VideoRecord(
                video_id=str(video_id),
                extension=str(entry.get("extension", "mp4")).lstrip("."),
                captions=captions,
                duration=float(duration) if duration is not None else None,
            )
        )
    return records


def load_split(
    annotations_dir: str | os.PathLike[str], split: str, dataset: str
) -> list[VideoRecord]:
    """Read ``<annotations_dir>/<split>.json`` (a local folder)."""
    path = Path(annotations_dir) / f"{split}.json"
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path} is not valid JSON: {err}") from err
    return parse_annotations(data, dataset, str(path))


def sample_caption(captions: Sequence[str], seed: int, epoch: int, video_id: str) -> str:
    """One caption of a video for one epoch: deterministic in (seed, epoch, video id)."""
    if len(captions) == 1:
        return captions[0]
    return captions[random.Random(f"{seed}:{epoch}:{video_id}").randrange(len(captions))]


def count_sentences(records: Iterable[VideoRecord]) -> int:
    return sum(len(r.captions) for r in records)


@dataclass
class ResolvedSplit:
    """Records whose video file exists, with its URI, and the ids whose file is missing."""

    records: list[VideoRecord]
    uris: list[str]
    missing: list[str]
    etags: list[str] = field(default_factory=list)  # by record: a version for the frame store


def resolve_videos(
    records: Sequence[VideoRecord],
    videos_root: str,
    *,
    s3_endpoint_url: str | None = None,
    frames_dir: bool = False,
) -> ResolvedSplit:
    """Match records to ``<videos_root>/<video_id>.<extension>`` (local folder or s3://).

    With ``frames_dir`` the root holds one folder of extracted frames per video,
    ``<videos_root>/<video_id>/``. A record whose video is absent goes to ``missing``.
    """
    if frames_dir:
        return _resolve_frame_folders(records, Path(videos_root))
    if videos_root.startswith("s3://"):
        available = _list_s3_names(videos_root, s3_endpoint_url)
        base = videos_root.rstrip("/") + "/"
    else:
        from pipelines.object_fetch import local_etag

        root = Path(videos_root)
        if not root.is_dir():
            raise AnnotationError(f"videos root {root} is not a folder")
        available = {p.name: local_etag(p.stat()) for p in root.iterdir()}
        base = str(root.resolve()) + os.sep
    found, uris, missing, etags = [], [], [], []
    for record in records:
        if record.filename in available:
            found.append(record)
            uris.append(base + record.filename)
            etags.append(available[record.filename])
        else:
            missing.append(record.video_id)
    return ResolvedSplit(found, uris, missing, etags)


def _resolve_frame_folders(records: Sequence[VideoRecord], root: Path) -> ResolvedSplit:
    if not root.is_dir():
        raise AnnotationError(f"frames folder {root} is not a folder")
    from pipelines.sources import list_frame_folders

    etag_of = {v.video_id: v.etag for v in list_frame_folders(root)}
    found = [r for r in records if r.video_id in etag_of]
    missing = [r.video_id for r in records if r.video_id not in etag_of]
    uris = [str((root / r.video_id).resolve()) for r in found]
    return ResolvedSplit(found, uris, missing, [etag_of[r.video_id] for r in found])


def _list_s3_names(prefix: str, s3_endpoint_url: str | None) -> dict[str, str]:
    """Object names directly under an s3:// prefix and their etags (pipelines.sources)."""
    from pipelines.sources import list_videos

    base = prefix.rstrip("/") + "/"
    names = {}
    for item in list_videos(prefix, s3_endpoint_url=s3_endpoint_url):
        uri = str(getattr(item, "uri", item))
        if uri.startswith(base):
            names[uri[len(base) :]] = str(getattr(item, "etag", ""))
    return names
