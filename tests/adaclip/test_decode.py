"""Candidate-frame decoding: pixel content checked through frame-index-painted videos."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from adaclip.decode import (
    CorruptVideoError,
    DecodedVideo,
    DecodeError,
    EmptyVideoError,
    NotAMediaFileError,
    NoVideoStreamError,
    apply_display_matrix,
    candidate_timestamps,
    decode_candidates,
    display_rotation,
)
from adaclip.synth import paint_frame, paint_index_video, read_painted_index


def expected_picks(times: Sequence[float], duration: float, n: int) -> list[int]:
    """METHOD.md section 1: the first frame of each segment, else the nearest earlier one."""
    targets = [duration * i / n for i in range(n)] + [math.inf]
    picks = []
    for lo, hi in zip(targets[:-1], targets[1:], strict=True):
        inside = [j for j, t in enumerate(times) if lo - 1e-6 <= t < hi - 1e-6]
        earlier = [j for j, t in enumerate(times) if t < lo - 1e-6]
        picks.append(inside[0] if inside else earlier[-1])
    return picks


def painted_indices(video: DecodedVideo) -> list[int]:
    return [read_painted_index(frame) for frame in video.frames]


def assert_content(video: DecodedVideo, times: Sequence[float], n: int) -> None:
    picks = expected_picks(times, video.duration, n)
    assert painted_indices(video) == picks
    np.testing.assert_allclose(video.timestamps, [times[j] for j in picks], atol=2e-3)
    np.testing.assert_allclose(video.targets, candidate_timestamps(video.duration, n))
    assert np.all(np.diff(video.timestamps) >= 0)


def test_candidate_timestamps_formula() -> None:
    assert candidate_timestamps(6.0, 4) == [0.0, 1.5, 3.0, 4.5]
    assert candidate_timestamps(1.0, 1) == [0.0]
    with pytest.raises(ValueError):
        candidate_timestamps(1.0, 0)


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [
        ("h264.mp4", "libx264", {}),
        ("vp9.webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
        ("h264.mkv", "libx264", {}),
        ("mpeg4.mp4", "mpeg4", {}),
        ("mpeg4.avi", "mpeg4", {}),
        ("h264.ts", "libx264", {}),
        ("h264.mov", "libx264", {}),
    ],
)
def test_containers_and_codecs(
    tmp_path: Path, name: str, codec: str, options: dict[str, str]
) -> None:
    path = tmp_path / name
    paint_index_video(path, 48, fps=8, size=(48, 64), codec=codec, options=options)
    video = decode_candidates(path, 16, size=32)
    assert video.frames.shape == (16, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.duration == pytest.approx(6.0, abs=0.01)
    assert painted_indices(video) == [3 * i for i in range(16)]
    assert_content(video, [i / 8 for i in range(48)], 16)
    assert (video.source_width, video.source_height) == (64, 48)
    assert video.source_fps == pytest.approx(8.0)


def test_audio_longer_than_video(tmp_path: Path) -> None:
    """Matroska has no stream duration; the container's covers the longer audio track."""
    path = tmp_path / "av.mkv"
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=8)
        assert isinstance(video, VideoStream)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        assert isinstance(audio, AudioStream)
        for i in range(24):  # 3 s of video
            frame = av.VideoFrame.from_ndarray(paint_frame(i, 48, 64), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples: np.ndarray = np.zeros((1, 1024), dtype=np.float32)
        for i in range(16000 * 6 // 1024):  # 6 s of audio
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, i * 1024
            container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    with av.open(str(path)) as check:
        assert check.duration is not None and check.duration > 5_000_000
    video_only = decode_candidates(path, 8, size=16)
    assert video_only.duration == pytest.approx(3.0)
    assert_content(video_only, [i / 8 for i in range(24)], 8)


def test_raw_stream_without_timestamps(tmp_path: Path) -> None:
    """An elementary H.264 stream: no pts, no duration, no seeking; frames are counted."""
    path = tmp_path / "raw.h264"
    paint_index_video(path, 40, fps=8, codec="libx264", container_format="h264")
    for source in (path, io.BytesIO(path.read_bytes())):
        video = decode_candidates(source, 8, size=16)
        assert video.duration == pytest.approx(5.0)
        assert painted_indices(video) == [5 * i for i in range(8)]
        np.testing.assert_allclose(video.timestamps, [5 * i / 8 for i in range(8)])


def test_n_not_dividing_frame_count(tmp_path: Path) -> None:
    path = tmp_path / "v.mkv"
    paint_index_video(path, 50, fps=10, codec="libx264")
    for n in (7, 13, 50):
        assert_content(decode_candidates(path, n, size=16), [i / 10 for i in range(50)], n)


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [
        ("gop.mp4", "libx264", {"g": "16", "bf": "3"}),
        ("gop.mkv", "libx264", {"g": "16", "bf": "3"}),
        ("gop.ts", "libx264", {"g": "16", "bf": "3"}),  # no index: timestamp search
        ("gop.webm", "libvpx-vp9", {"g": "16", "deadline": "realtime", "cpu-used": "8"}),
    ],
)
def test_keyframe_seeks(tmp_path: Path, name: str, codec: str, options: dict[str, str]) -> None:
    """A 27 s clip with a keyframe every 2 s: far targets are reached by seeking."""
    path = tmp_path / name
    paint_index_video(path, 216, fps=8, codec=codec, options=options)
    times = [i / 8 for i in range(216)]
    for n in (5, 8, 16, 40):
        assert_content(decode_candidates(path, n, size=16), times, n)


@pytest.mark.parametrize(
    ("name", "options"),
    [("vfr.mkv", {}), ("vfr.mp4", {"bf": "0"})],
)
def test_variable_frame_rate(tmp_path: Path, name: str, options: dict[str, str]) -> None:
    # Bursts and long holds: some segments hold no frame and repeat the earlier one.
    times = [0.0, 0.1, 0.15, 0.5, 0.52, 1.0, 1.9, 2.0, 2.04, 2.08, 4.5, 4.6]
    path = tmp_path / name
    paint_index_video(path, len(times), fps=25, codec="libx264", times=times, options=options)
    for n in (4, 16, 33):
        assert_content(decode_candidates(path, n, size=16), times, n)


def test_vfr_hold_after_skipped_frames(tmp_path: Path) -> None:
    """The frame before a long hold is found even when the decoder skipped B-frames."""
    times = [i / 25 for i in range(40)] + [5.0 + i / 25 for i in range(40)]
    path = tmp_path / "hold.mkv"
    paint_index_video(path, len(times), fps=25, codec="libx264", times=times)
    for n in (8, 16):
        assert_content(decode_candidates(path, n, size=16), times, n)


def test_short_video_repeats_nearest_earlier_frame(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    paint_index_video(path, 5, fps=8, codec="libx264")
    video = decode_candidates(path, 16, size=16)
    assert len(video) == 16
    indices = painted_indices(video)
    assert indices == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    assert_content(video, [i / 8 for i in range(5)], 16)


def test_single_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "one.mkv"
    paint_index_video(path, 1, fps=8, codec="libx264")
    video = decode_candidates(path, 4, size=8)
    assert painted_indices(video) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [("odd.webm", "libvpx-vp9", "yuv420p"), ("odd.mkv", "libx264", "yuv444p")],
)
def test_odd_sizes(tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    path = tmp_path / name
    paint_index_video(path, 12, fps=8, size=(61, 97), codec=codec, pix_fmt=pix_fmt)
    native = decode_candidates(path, 4, size=None)
    assert native.frames.shape == (4, 61, 97, 3)
    assert painted_indices(native) == [0, 3, 6, 9]
    assert_corner(native.frames[0], "tl")
    cropped = decode_candidates(path, 4, size=31)
    assert cropped.frames.shape == (4, 31, 31, 3)
    assert painted_indices(cropped) == [0, 3, 6, 9]
    stretched = decode_candidates(path, 4, size=(20, 30), resize_mode="stretch")
    assert stretched.frames.shape == (4, 20, 30, 3)
    assert_corner(stretched.frames[0], "tl")


def test_shortest_side_crop_keeps_the_centre(tmp_path: Path) -> None:
    path = tmp_path / "wide.mp4"
    paint_index_video(path, 2, fps=8, size=(48, 96), codec="libx264")
    video = decode_candidates(path, 1, size=24)
    assert video.frames.shape == (1, 24, 24, 3)
    # The top-left marker spans the first 24 of 96 columns: the centre crop drops it.
    frame = video.frames[0].astype(float)
    assert np.abs(frame[:6, :6] - np.median(frame.reshape(-1, 3), axis=0)).mean() < 10
    full = decode_candidates(path, 1, size=24, resize_mode="stretch").frames[0].astype(float)
    assert np.abs(full[:6, :3] - np.median(full.reshape(-1, 3), axis=0)).mean() > 100


def corner_of_marker(frame: np.ndarray) -> str:
    h, w = frame.shape[:2]
    background = np.median(frame.reshape(-1, 3), axis=0)
    diff = np.abs(frame.astype(float) - background).mean(axis=2)
    quarters = {
        "tl": diff[: h // 4, : w // 4],
        "tr": diff[: h // 4, -(w // 4) :],
        "bl": diff[-(h // 4) :, : w // 4],
        "br": diff[-(h // 4) :, -(w // 4) :],
    }
    return max(quarters, key=lambda k: float(quarters[k].mean()))


def assert_corner(frame: np.ndarray, corner: str) -> None:
    assert corner_of_marker(frame) == corner


# Where the top-left marker shows after the display matrix, as the ffmpeg command line
# (autorotate) shows it; measured with ffmpeg 5.1 on files written by PyAV.
ROTATIONS = [
    (0, False, "tl", (48, 64)),
    (90, False, "bl", (64, 48)),
    (-90, False, "tr", (64, 48)),
    (180, False, "br", (48, 64)),
    (90, True, "br", (64, 48)),
    (-90, True, "tl", (64, 48)),
    (180, True, "bl", (48, 64)),
]


@pytest.mark.parametrize(("rotation", "hflip", "corner", "shape"), ROTATIONS)
def test_rotation_metadata(
    tmp_path: Path, rotation: int, hflip: bool, corner: str, shape: tuple[int, int]
) -> None:
    path = tmp_path / "rot.mp4"
    paint_index_video(path, 6, size=(48, 64), rotation=rotation, hflip=hflip)
    video = decode_candidates(path, 3, size=None)
    assert video.frames.shape[1:3] == shape
    assert (video.source_height, video.source_width) == shape
    assert painted_indices(video) == [0, 2, 4]
    assert_corner(video.frames[0], corner)
    stretched = decode_candidates(path, 3, size=(30, 20), resize_mode="stretch")
    assert stretched.frames.shape[1:3] == (30, 20)
    assert_corner(stretched.frames[0], corner)


def _matrix(degrees_ccw: int, hflip: bool = False) -> list[int]:
    """The display matrix PyAV's ``set_display_rotation`` writes (16.16 fixed point)."""
    radians = math.radians(degrees_ccw)
    c, s = round(math.cos(radians) * 65536), round(math.sin(radians) * 65536)
    m = [c, -s, 0, s, c, 0, 0, 0, 1 << 30]
    if hflip:
        m[0], m[3] = -m[0], -m[3]
    return m


@pytest.mark.parametrize(("rotation", "hflip", "corner", "shape"), ROTATIONS)
def test_apply_display_matrix(
    rotation: int, hflip: bool, corner: str, shape: tuple[int, int]
) -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:12, :16] = 255
    matrix = _matrix(rotation, hflip)
    shown = apply_display_matrix(image, matrix)
    assert shown.shape[:2] == shape
    assert_corner(shown, corner)
    if not hflip:
        assert display_rotation(matrix) == pytest.approx(rotation if rotation != 180 else -180)
    assert apply_display_matrix(image, None) is image


def test_bytesio_and_file_object_equal_path(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    paint_index_video(path, 40, fps=8, codec="libx264", options={"g": "8"})
    from_path = decode_candidates(path, 10, size=24)
    from_bytes = decode_candidates(io.BytesIO(path.read_bytes()), 10, size=24)
    with path.open("rb") as handle:
        from_file = decode_candidates(handle, 10, size=24)
    for other in (from_bytes, from_file):
        np.testing.assert_array_equal(other.frames, from_path.frames)
        np.testing.assert_array_equal(other.timestamps, from_path.timestamps)
        assert other.duration == from_path.duration


def test_timestamps_increase_strictly_for_long_videos(tmp_path: Path) -> None:
    path = tmp_path / "v.webm"
    paint_index_video(path, 64, fps=16, codec="libvpx-vp9", options={"deadline": "realtime"})
    video = decode_candidates(path, 16, size=8)
    assert np.all(np.diff(video.timestamps) > 0)
    assert np.all(video.timestamps >= video.targets - 1e-6)


class _Pipe(io.BytesIO):
    def seekable(self) -> bool:
        return False


def test_argument_checks(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    paint_index_video(path, 4)
    with pytest.raises(ValueError, match="seekable"):
        decode_candidates(_Pipe(path.read_bytes()), 2)
    with pytest.raises(ValueError):
        decode_candidates(path, 0)
    with pytest.raises(ValueError):
        decode_candidates(path, 2, size=0)
    with pytest.raises(ValueError):
        decode_candidates(path, 2, resize_mode="squash")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- errors


def _write_audio(path: Path, codec: str, sample_format: str, dtype: type) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=16000)
        assert isinstance(stream, AudioStream)
        samples: np.ndarray = np.zeros((1, 1024), dtype=dtype)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _write_zero_frame_video(path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()


def test_random_bytes_is_not_a_media_file(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    path = tmp_path / "noise.mp4"
    path.write_bytes(data)
    with pytest.raises(NotAMediaFileError, match="noise.mp4"):
        decode_candidates(path, 4)
    with pytest.raises(NotAMediaFileError):
        decode_candidates(io.BytesIO(data), 4)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(NotAMediaFileError):
        decode_candidates(tmp_path / "empty.mp4", 4)


@pytest.mark.parametrize(
    ("name", "codec", "sample_format", "dtype"),
    [("a.wav", "pcm_s16le", "s16", np.int16), ("a.m4a", "aac", "fltp", np.float32)],
)
def test_audio_only_has_no_video_stream(
    tmp_path: Path, name: str, codec: str, sample_format: str, dtype: type
) -> None:
    path = tmp_path / name
    _write_audio(path, codec, sample_format, dtype)
    with pytest.raises(NoVideoStreamError, match="audio"):
        decode_candidates(path, 4)


def test_truncated_faststart_mp4_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    paint_index_video(path, 48, codec="libx264", container_options={"movflags": "faststart"})
    with av.open(str(path)) as check:  # the index (moov) is at the front
        assert check.streams.video[0].frames == 48
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptVideoError, match="cut.mp4"):
        decode_candidates(cut, 8)


def test_truncated_mkv_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "v.mkv"
    paint_index_video(path, 96, codec="libx264")
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptVideoError, match="truncated"):
        decode_candidates(cut, 8)


def test_header_only_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "v.mkv"
    paint_index_video(path, 8, codec="libx264")
    cut = tmp_path / "header.mkv"
    cut.write_bytes(path.read_bytes()[:400])
    with pytest.raises(CorruptVideoError):
        decode_candidates(cut, 4)


def test_zero_frame_video_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "zero.avi"
    _write_zero_frame_video(path)
    with av.open(str(path)) as check:
        assert len(check.streams.video) == 1
    with pytest.raises(EmptyVideoError):
        decode_candidates(path, 4)


def test_error_types_share_a_base() -> None:
    for error in (NotAMediaFileError, NoVideoStreamError, CorruptVideoError, EmptyVideoError):
        assert issubclass(error, DecodeError)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_candidates(tmp_path / "absent.mp4", 4)
