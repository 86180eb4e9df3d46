"""Candidate frames from a folder of pre-extracted frames (the paper's ``frames_dir``).

Users of the paper's code extracted every video into ``frames_dir/<video_id>/`` as
``image_00001.jpg, image_00002.jpg, ...`` (1-based, 5 digits) at a fixed frame rate.
:func:`decode_candidates_from_frames` samples the N candidates from such a folder by the
same rule as :func:`adaclip.decode.decode_candidates` (METHOD.md section 1): the M stored
frames are the video's frames at ``fps``, frame ``j`` (0-based) shown at ``j / fps`` and
the duration ``M / fps``; candidate ``i`` is the first frame at or after
``t_i = duration * i / N``, or the nearest earlier frame when segment ``i`` holds none.
The chosen indices do not depend on ``fps`` (``j_i = ceil(M * i / N)``, else
``j_i - 1``); ``fps`` only sets the times. A folder extracted from a video at its own
frame rate therefore yields the same frames as decoding the video.

The paper's own loader picks ``floor(M * i / N)`` instead (``np.linspace(0, M, N,
endpoint=False)``): the same frame when ``M * i / N`` is whole, otherwise one frame
earlier. This module follows METHOD.md so both sources agree.

File names: any ``<prefix><number>.<jpg|jpeg|png|bmp|webp>`` with one prefix per folder
(``image_00001.jpg``, ``img_00001.jpg``, ``frame_000001.png``, ``00001.jpg``, 0- or
1-based); numbers must be consecutive. Frames are resized and centre-cropped with the
same scaler and arithmetic as the video path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from adaclip.decode import (
    CorruptVideoError,
    DecodedVideo,
    EmptyVideoError,
    ResizeMode,
    _frame_to_rgb,
    _output_size,
    candidate_timestamps,
)

__all__ = [
    "FRAME_EXTENSIONS",
    "FrameFolder",
    "decode_candidates_from_frames",
    "frame_indices",
    "list_frames",
]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_NAME = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<ext>\.[A-Za-z]+)$")


@dataclass(frozen=True)
class FrameFolder:
    """The frame files of one video, in order."""

    folder: Path
    files: tuple[Path, ...]
    first_number: int  # the number in the first file's name (1 for the paper's layout)
    pattern: str  # e.g. "image_{:05d}.jpg"

    def __len__(self) -> int:
        return len(self.files)


def list_frames(folder: str | os.PathLike[str]) -> FrameFolder:
    """The numbered frame images of ``folder``, sorted by number.

    Raises:
        FileNotFoundError / NotADirectoryError: the folder is missing or not a folder.
        EmptyVideoError: no numbered image in it.
        CorruptVideoError: numbers are not consecutive (missing frames would shift every
            time), or several naming patterns are mixed so the order is ambiguous.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such frames folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    groups: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for entry in os.scandir(root):
        match = _NAME.match(entry.name)
        if not match or match["ext"].lower() not in FRAME_EXTENSIONS or not entry.is_file():
            continue
        key = (match["prefix"], match["ext"].lower())
        groups.setdefault(key, []).append((int(match["number"]), Path(entry.path)))
    if not groups:
        raise EmptyVideoError(f"{root}: no numbered frame images ({', '.join(FRAME_EXTENSIONS)})")
    ranked = sorted(groups.items(), key=lambda kv: len(kv[1]), reverse=True)
    if len(ranked) > 1 and len(ranked[1][1]) * 10 > len(ranked[0][1]):
        kinds = ", ".join(f"{p}<n>{e} ({len(v)})" for (p, e), v in ranked[:3])
        raise CorruptVideoError(f"{root}: frames under several naming patterns: {kinds}")
    (prefix, _), numbered = ranked[0]
    numbered.sort()
    numbers = [n for n, _ in numbered]
    first, last = numbers[0], numbers[-1]
    if len(set(numbers)) != len(numbers):
        raise CorruptVideoError(f"{root}: two frame files share a number (image_1 and image_001?)")
    if last - first + 1 != len(numbers):
        gap = next(a + 1 for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1)
        raise CorruptVideoError(
            f"{root}: frame numbers are not consecutive ({len(numbers)} files from "
            f"{first} to {last}; number {gap} is the first missing)"
        )
    first_match = _NAME.match(numbered[0][1].name)
    assert first_match is not None  # it was grouped by this very pattern
    digits, ext = first_match["number"], first_match["ext"]
    width = len(digits) if len(digits) > len(str(first)) else 0
    pattern = f"{prefix}{{:0{width}d}}{ext}" if width else f"{prefix}{{:d}}{ext}"
    return FrameFolder(root, tuple(p for _, p in numbered), first, pattern)


def frame_indices(num_stored: int, num_frames: int) -> list[int]:
    """0-based stored-frame index of each candidate (METHOD.md section 1).

    With M stored frames on a uniform grid, candidate ``i`` is the first frame at or
    after ``M * i / N`` frames, unless that frame already belongs to segment ``i + 1``,
    in which case the nearest earlier frame repeats. Exact integer arithmetic.
    """
    if num_stored < 1:
        raise ValueError(f"need at least one stored frame, got {num_stored}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    m, n = num_stored, num_frames
    picks = []
    for i in range(n):
        j = -(-m * i // n)  # ceil(M * i / N)
        if j * n >= m * (i + 1) or j >= m:  # segment i holds no frame
            j -= 1
        picks.append(j)
    return picks


def decode_candidates_from_frames(
    folder: str | os.PathLike[str],
    num_frames: int,
    size: int | tuple[int, int] | None = 224,
    fps: float | None = None,
    *,
    resize_mode: ResizeMode = "shortest_center_crop",
) -> DecodedVideo:
    """The ``num_frames`` candidates of a pre-extracted frames folder.

    Args:
        folder: ``frames_dir/<video_id>`` holding ``image_00001.jpg ...``.
        num_frames: N; exactly N frames come back (short folders repeat frames).
        size: as :func:`adaclip.decode.decode_candidates`: an int for a square,
            ``(height, width)``, or None to keep the stored size.
        fps: the rate the frames were extracted at. It sets ``timestamps``,
            ``targets`` and ``duration`` (seconds) and never the chosen frames. None
            when unknown: times are then in stored-frame units (as if 1 fps) and
            ``source_fps`` is None.
        resize_mode: ``"shortest_center_crop"`` or ``"stretch"``, as for videos.

    Raises:
        FileNotFoundError, NotADirectoryError: no such folder.
        EmptyVideoError: no frame images in it.
        CorruptVideoError: a gap in the numbering, mixed patterns, an unreadable image
            or images of different sizes. All but the first two are DecodeErrors.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    out_hw = _output_size(size)
    if resize_mode not in ("shortest_center_crop", "stretch"):
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    listing = list_frames(folder)
    m = len(listing)
    rate = float(fps) if fps is not None else 1.0
    picks = frame_indices(m, num_frames)
    duration = m / rate
    frames: np.ndarray | None = None
    source_hw: tuple[int, int] | None = None
    previous = -1
    for i, j in enumerate(picks):
        if j == previous and frames is not None:
            frames[i] = frames[i - 1]
            continue
        image = _read_rgb(listing.files[j])
        if source_hw is None:
            source_hw = image.shape[:2]
        elif image.shape[:2] != source_hw:
            raise CorruptVideoError(
                f"{listing.files[j]}: {image.shape[1]}x{image.shape[0]} differs from the "
                f"folder's first frame ({source_hw[1]}x{source_hw[0]})"
            )
        hw, mode = (out_hw, resize_mode) if out_hw is not None else (source_hw, "stretch")
        if frames is None:
            frames = np.empty((num_frames, *hw, 3), dtype=np.uint8)
        frames[i] = _resize(image, hw, mode)
        previous = j
    assert frames is not None and source_hw is not None
    return DecodedVideo(
        frames=frames,
        timestamps=np.array([j / rate for j in picks], dtype=np.float64),
        targets=np.array(candidate_timestamps(duration, num_frames), dtype=np.float64),
        duration=duration,
        source_width=source_hw[1],
        source_height=source_hw[0],
        source_fps=float(fps) if fps is not None else None,
        rotation=0,
        codec="frames",
    )


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.load()
            oriented = ImageOps.exif_transpose(im)
            return np.asarray(oriented.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise CorruptVideoError(f"{path}: unreadable frame image ({exc})") from exc


def _resize(image: np.ndarray, out_hw: tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """Scale and centre-crop with the video path's own code (swscale, same rounding)."""
    if image.shape[:2] == out_hw:
        return image
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return _frame_to_rgb(frame, out_hw, mode, None, None)


def extract_frames(
    video: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    template: str = "image_{:05d}.jpg",
) -> int:
    """The paper's frame extraction: every decoded frame to a JPEG, 1-based 5-digit names.

    Writes ``folder`` (created; must not exist) in the layout ``decode_candidates_from_frames``
    and ``--frames-dir`` read. Returns the number of frames written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True)
    count = 0
    with av.open(str(video)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(
                folder / template.format(count), quality=95
            )
    return count
