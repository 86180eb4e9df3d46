"""Frames folders: the same candidates as the video they were extracted from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaclip.decode import CorruptVideoError, DecodeError, EmptyVideoError, decode_candidates
from adaclip.frames_dir import (
    decode_candidates_from_frames,
    extract_frames,
    frame_indices,
    list_frames,
)
from adaclip.synth import paint_frame, paint_index_video, read_painted_index


def brute_force_picks(m: int, n: int) -> list[int]:
    """METHOD.md section 1 on frames at j / fps: first in the segment, else nearest earlier."""
    duration = float(m)  # 1 fps: frame j at time j
    targets = [duration * i / n for i in range(n)] + [math.inf]
    picks = []
    for lo, hi in zip(targets[:-1], targets[1:], strict=True):
        inside = [j for j in range(m) if lo - 1e-9 <= j < hi - 1e-9]
        picks.append(inside[0] if inside else max(j for j in range(m) if j < lo))
    return picks


def test_frame_indices_match_the_segment_rule() -> None:
    for m in range(1, 70):
        for n in (1, 2, 3, 7, 12, 16, 32, 64):
            assert frame_indices(m, n) == brute_force_picks(m, n), (m, n)
    with pytest.raises(ValueError):
        frame_indices(0, 4)


@pytest.mark.parametrize(
    ("num_stored", "fps", "n", "size"),
    [
        (37, 8, 16, 32),  # M not a multiple of N
        (48, 8, 16, 40),  # M = 3N
        (10, 8, 16, 24),  # shorter than N: frames repeat
        (53, 25, 12, None),  # another rate, source size kept
    ],
)
def test_frames_folder_matches_the_video(
    tmp_path: Path, num_stored: int, fps: int, n: int, size: int | None
) -> None:
    video = tmp_path / "clip.mp4"
    paint_index_video(video, num_stored, fps=fps, size=(48, 64), options={"crf": "10"})
    folder = tmp_path / "frames" / "clip"
    assert extract_frames(video, folder) == num_stored

    from_video = decode_candidates(video, n, size)
    from_frames = decode_candidates_from_frames(folder, n, size, fps=fps)

    indices = [read_painted_index(f) for f in from_frames.frames]
    assert indices == [read_painted_index(f) for f in from_video.frames]
    assert indices == frame_indices(num_stored, n)
    np.testing.assert_allclose(from_frames.timestamps, from_video.timestamps, atol=1e-3)
    np.testing.assert_allclose(from_frames.targets, from_video.targets, atol=1e-3)
    assert from_frames.duration == pytest.approx(from_video.duration, abs=1e-3)
    assert from_frames.frames.shape == from_video.frames.shape
    diff = np.abs(from_frames.frames.astype(np.int16) - from_video.frames.astype(np.int16))
    assert diff.mean() < 4.0  # same geometry: only JPEG error apart
    assert (from_frames.source_width, from_frames.source_height) == (64, 48)
    assert from_frames.source_fps == fps
    assert len(from_frames) == n


def write_painted(folder: Path, names: list[str], hw: tuple[int, int] = (30, 40)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(paint_frame(i, *hw)).save(folder / name)


@pytest.mark.parametrize(
    "template",
    ["image_{:05d}.jpg", "img_{:05d}.jpg", "frame_{:06d}.png", "{:05d}.jpeg", "{:d}.png"],
)
@pytest.mark.parametrize("start", [0, 1])
def test_naming_variants(tmp_path: Path, template: str, start: int) -> None:
    names = [template.format(start + i) for i in range(12)]  # {:d}: 10 sorts after 9
    write_painted(tmp_path / "v", names)
    (tmp_path / "v" / "notes.txt").write_text("not a frame")
    listing = list_frames(tmp_path / "v")
    assert [p.name for p in listing.files] == names
    assert listing.first_number == start
    assert listing.pattern == template
    video = decode_candidates_from_frames(tmp_path / "v", 5, 16)
    assert [read_painted_index(f) for f in video.frames] == frame_indices(12, 5)
    assert video.source_fps is None  # times in stored-frame units
    np.testing.assert_allclose(video.timestamps, frame_indices(12, 5))
    assert video.duration == 12.0


def test_stretch_and_exif_free_sizes(tmp_path: Path) -> None:
    write_painted(tmp_path / "v", [f"image_{i:05d}.jpg" for i in range(1, 5)])
    video = decode_candidates_from_frames(tmp_path / "v", 4, (20, 10), resize_mode="stretch")
    assert video.frames.shape == (4, 20, 10, 3)
    kept = decode_candidates_from_frames(tmp_path / "v", 4, None, fps=2.0)
    assert kept.frames.shape == (4, 30, 40, 3)
    np.testing.assert_allclose(kept.timestamps, [0.0, 0.5, 1.0, 1.5])


def test_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_candidates_from_frames(tmp_path / "nope", 4)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        decode_candidates_from_frames(tmp_path / "file.jpg", 4)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames")
    with pytest.raises(EmptyVideoError):
        decode_candidates_from_frames(empty, 4)

    gap = tmp_path / "gap"
    write_painted(gap, ["image_00001.jpg", "image_00002.jpg", "image_00004.jpg"])
    with pytest.raises(CorruptVideoError, match="first missing"):
        decode_candidates_from_frames(gap, 4)

    broken = tmp_path / "broken"
    write_painted(broken, ["image_00001.jpg"])
    (broken / "image_00002.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CorruptVideoError):
        decode_candidates_from_frames(broken, 2)

    mixed = tmp_path / "mixed"
    write_painted(mixed, [f"image_{i:05d}.jpg" for i in range(1, 4)])
    write_painted(mixed, [f"img_{i:05d}.png" for i in range(1, 4)])
    with pytest.raises(DecodeError, match="naming patterns"):
        decode_candidates_from_frames(mixed, 2)

    sizes = tmp_path / "sizes"
    write_painted(sizes, ["image_00001.jpg"])
    Image.fromarray(paint_frame(1, 20, 20)).save(sizes / "image_00002.jpg")
    with pytest.raises(CorruptVideoError, match="differs"):
        decode_candidates_from_frames(sizes, 2)

    with pytest.raises(ValueError):
        decode_candidates_from_frames(gap, 0)
    with pytest.raises(ValueError):
        decode_candidates_from_frames(gap, 2, fps=0)
