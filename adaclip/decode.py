"""Candidate-frame decoding with PyAV (METHOD.md section 1).

A video of duration ``d`` is split into ``N`` equal time segments; candidate ``i`` is the
first frame of segment ``[t_i, t_{i+1})`` with ``t_i = d * i / N``. A segment that holds
no frame (a video shorter than ``N`` frames, or a long frame in a variable-frame-rate
video) repeats the nearest earlier frame, so exactly ``N`` frames always come back.

Decoding seeks to the keyframe before a target and decodes forward to it, re-using the
open decoder while the next target is closer than the next keyframe. Frames between
targets are decoded (they are references) but never converted to RGB, and frames that
no later frame references are skipped by the decoder while the target is still far off.
All times come from ``pts * time_base``, relative to the start of the video stream.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Literal

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.stream import Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

__all__ = [
    "CorruptVideoError",
    "DecodeError",
    "DecodedVideo",
    "EmptyVideoError",
    "NoVideoStreamError",
    "NotAMediaFileError",
    "ResizeMode",
    "UnsupportedCodecError",
    "apply_display_matrix",
    "candidate_timestamps",
    "decode_candidates",
    "display_rotation",
]

ResizeMode = Literal["shortest_center_crop", "stretch"]
VideoSource = str | os.PathLike[str] | BinaryIO

_EPS = 1e-6  # seconds: tolerance when comparing a frame time with a target time
_FORWARD_WINDOW_S = 2.0  # without a keyframe index, decode forward rather than seek
_SKIP_MARGIN_FRAMES = 3  # frames this close to a target are never skipped
_MIN_COVERAGE = 0.5  # a stream ending before this fraction of its duration is truncated
_MAX_SANE_DURATION_S = 1e7  # larger declared durations are placeholders, not facts
# Raised as they are; any other FFmpeg error means the media itself is bad.
_FILESYSTEM_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class DecodeError(Exception):
    """A video could not be turned into candidate frames."""


class NotAMediaFileError(DecodeError):
    """The bytes are not a media container FFmpeg recognises."""


class NoVideoStreamError(DecodeError):
    """The container holds no video stream (audio only, subtitles, cover art only), or the
    file is a still image (PNG, JPEG ...) that FFmpeg would read as a one-frame video."""


class UnsupportedCodecError(DecodeError):
    """The video stream uses a codec this FFmpeg build cannot decode."""


class CorruptVideoError(DecodeError):
    """The container or stream is damaged: decode errors, a truncated file."""


class EmptyVideoError(DecodeError):
    """The video stream holds no decodable frame."""


@dataclass(frozen=True, eq=False)
class DecodedVideo:
    """The N candidate frames of one video.

    Times are seconds from the start of the video stream (``stream.start_time``), which
    is the pts time for the usual file whose stream starts at zero.
    """

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, display orientation
    timestamps: np.ndarray  # (N,) float64: time of each returned frame, non-decreasing
    targets: np.ndarray  # (N,) float64: t_i = duration * i / N
    duration: float  # seconds
    source_width: int  # display size of the source, after rotation and pixel aspect
    source_height: int
    source_fps: float | None  # average frame rate when the container states one
    rotation: int  # degrees counter-clockwise applied from the display matrix
    codec: str

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def candidate_timestamps(duration: float, n: int) -> list[float]:
    """Segment start times ``t_i = duration * i / n`` for ``i = 0 .. n-1``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [duration * i / n for i in range(n)]


def display_rotation(matrix: Sequence[int]) -> float:
    """Counter-clockwise rotation in degrees encoded by an FFmpeg display matrix.

    Same formula as ``av_display_rotation_get``: ``matrix`` is the 9 int32 values of
    ``AV_FRAME_DATA_DISPLAYMATRIX``. Returns NaN for a degenerate matrix.
    """
    scale0 = math.hypot(matrix[0], matrix[3])
    scale1 = math.hypot(matrix[1], matrix[4])
    if scale0 == 0 or scale1 == 0:
        return math.nan
    return -math.degrees(math.atan2(matrix[1] / scale1, matrix[0] / scale0)) + 0.0


def apply_display_matrix(image: np.ndarray, matrix: Sequence[int] | None) -> np.ndarray:
    """Turn a decoded ``(H, W, C)`` image into display orientation.

    Follows the ffmpeg command line's autorotate rules: right-angle rotations and
    mirrors are applied exactly; other angles are left alone. Returns a view.
    """
    if matrix is None:
        return image
    clockwise = -display_rotation(matrix)
    if math.isnan(clockwise) or abs(clockwise - 90 * round(clockwise / 90)) > 1.0:
        return image
    quarters = round(clockwise / 90) % 4
    if quarters == 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return image.swapaxes(0, 1) if matrix[3] > 0 else np.rot90(image, -1)
    if quarters == 3:  # transpose=clock_flip or transpose=cclock
        return np.rot90(image, -1)[::-1] if matrix[3] < 0 else np.rot90(image, 1)
    if quarters == 2 and matrix[0] < 0:  # hflip (then maybe vflip)
        image = image[:, ::-1]
    return image[::-1] if matrix[4] < 0 else image  # vflip


def decode_candidates(
    source: VideoSource,
    num_frames: int,
    size: int | tuple[int, int] | None = 224,
    *,
    resize_mode: ResizeMode = "shortest_center_crop",
    threads: int = 0,
) -> DecodedVideo:
    """Decode the ``num_frames`` candidate frames of a video (METHOD.md section 1).

    Args:
        source: a path, or a seekable binary file object positioned at its start.
        num_frames: N, the number of candidates; exactly N frames come back.
        size: output size: an int for a square, ``(height, width)``, or None to keep the
            source's display size.
        resize_mode: ``"shortest_center_crop"`` scales the short side to fit and crops
            the centre (CLIP's square input); ``"stretch"`` scales to ``size`` exactly.
        threads: decoder threads; 0 lets FFmpeg choose.

    Returns:
        The frames with their times, the duration and facts about the source.

    Raises:
        NotAMediaFileError, NoVideoStreamError, UnsupportedCodecError,
        CorruptVideoError, EmptyVideoError: all subclasses of DecodeError.
        OSError: the file cannot be opened (missing, permissions) or a file object's
            own read fails.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    out_hw = _output_size(size)
    if resize_mode not in ("shortest_center_crop", "stretch"):
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    name = _source_name(source)
    seekable = getattr(source, "seekable", None)
    if callable(seekable) and not seekable():
        raise ValueError(f"{name}: the file object must be seekable")
    request = _Request(name, num_frames, out_hw, resize_mode, threads)
    offset = None if isinstance(source, str | os.PathLike) else source.tell()
    try:
        with _open(source, name) as container:
            stream = _video_stream(container, name)
            duration = _declared_duration(container, stream)
            if duration is not None:
                return _decode(container, stream, duration, True, request)
            duration = _scanned_duration(container, stream, name)
            if _rewind(container, stream):
                return _decode(container, stream, duration, False, request)
        # The demuxer cannot seek back (a raw elementary stream): open it again.
        if offset is not None:
            source.seek(offset)  # type: ignore[union-attr]
        with _open(source, name) as container:
            return _decode(container, _video_stream(container, name), duration, False, request)
    except _FILESYSTEM_ERRORS:
        raise
    except av.error.FFmpegError as exc:
        raise CorruptVideoError(f"{name}: decoding failed: {_reason(exc)}") from exc


@dataclass(frozen=True)
class _Request:
    name: str
    num_frames: int
    out_hw: tuple[int, int] | None
    resize_mode: ResizeMode
    threads: int


def _decode(
    container: InputContainer,
    stream: VideoStream,
    duration: float,
    declared: bool,
    request: _Request,
) -> DecodedVideo:
    """Pick and convert the candidates; ``declared``: the duration came from a header."""
    ctx = stream.codec_context
    ctx.thread_type = "AUTO"
    if request.threads > 0:
        ctx.thread_count = request.threads
    name, num_frames = request.name, request.num_frames
    targets = candidate_timestamps(duration, num_frames)
    cursor = _Cursor(container, stream, _time_base(stream), _start_pts(stream))
    output = _Output(num_frames, request.out_hw, request.resize_mode, stream.sample_aspect_ratio)
    last: tuple[VideoFrame, float] | None = None
    try:
        for lo, hi in zip(targets, [*targets[1:], math.inf], strict=True):
            last = cursor.pick(lo, hi) or last
            if last is None:
                raise EmptyVideoError(f"{name}: the video stream holds no decodable frame")
            output.add(*last, cursor.matrix)
    finally:
        cursor.close()
    end = cursor.end_time
    if declared and cursor.exhausted and end < _MIN_COVERAGE * duration:
        raise CorruptVideoError(
            f"{name}: the video stream ends at {end:.2f} s but the file declares "
            f"{duration:.2f} s (truncated file?)"
        )
    assert output.frames is not None
    rotation = display_rotation(output.matrix) if output.matrix is not None else 0.0
    fps = stream.average_rate or stream.guessed_rate
    return DecodedVideo(
        frames=output.frames,
        timestamps=np.array(output.times, dtype=np.float64),
        targets=np.array(targets, dtype=np.float64),
        duration=float(duration),
        source_width=output.display_wh[0],
        source_height=output.display_wh[1],
        source_fps=float(fps) if fps else None,
        rotation=0 if math.isnan(rotation) else round(rotation),
        codec=ctx.name,
    )


class _Output:
    """RGB arrays of the picks, converted as they are chosen so no decoded frame piles up."""

    def __init__(
        self,
        num_frames: int,
        out_hw: tuple[int, int] | None,
        resize_mode: ResizeMode,
        sample_aspect: Fraction | None,
    ) -> None:
        self.num_frames = num_frames
        self.out_hw = out_hw
        self.resize_mode = resize_mode
        self.sample_aspect = sample_aspect
        self.frames: np.ndarray | None = None  # (N, H, W, 3) uint8
        self.times: list[float] = []
        self.matrix: tuple[int, ...] | None = None
        self.display_wh = (0, 0)
        self._last: VideoFrame | None = None

    def add(self, frame: VideoFrame, time: float, stream_matrix: tuple[int, ...] | None) -> None:
        i = len(self.times)
        if self.frames is None:  # the first pick fixes orientation and output size
            self.matrix = _frame_matrix(frame) or stream_matrix
            w, h = _display_size(frame.width, frame.height, self.sample_aspect, self.matrix)
            self.display_wh = (w, h)
            if self.out_hw is None:  # the source's display size, kept for every frame
                self.out_hw, self.resize_mode = (h, w), "stretch"
            self.frames = np.empty((self.num_frames, *self.out_hw, 3), dtype=np.uint8)
        assert self.out_hw is not None
        if frame is self._last:
            self.frames[i] = self.frames[i - 1]
        else:
            matrix = _frame_matrix(frame) or self.matrix
            self.frames[i] = _frame_to_rgb(
                frame, self.out_hw, self.resize_mode, matrix, self.sample_aspect
            )
        self._last = frame
        self.times.append(time)


class _Cursor:
    """A forward-decoding position in one stream that jumps ahead with keyframe seeks.

    ``head`` is the latest decoded frame and ``prev`` the one before it: after
    ``_advance(lo)``, ``head`` is the first frame at or after ``lo`` (None at the end of
    the stream) and ``prev`` the last frame before it, when it was decoded.
    """

    def __init__(
        self, container: InputContainer, stream: VideoStream, time_base: Fraction, start: int
    ) -> None:
        self.container = container
        self.stream = stream
        self.time_base = time_base
        self.start = start
        self.head: tuple[VideoFrame, float] | None = None
        self.prev: tuple[VideoFrame, float] | None = None
        self.exhausted = False
        self.last_time = 0.0  # time of the latest decoded frame
        self.end_time = 0.0  # latest end (time + duration) of a frame seen
        self.matrix: tuple[int, ...] | None = None
        self._seen_any = False
        self._pts_missing = False  # frames without pts: times are counted, no seeking
        self._frames: Iterator[tuple[VideoFrame, float]] | None = None
        self._target = 0.0
        self._frame_step = 1.0 / float(stream.guessed_rate or stream.average_rate or 25)
        self._margin = max(_SKIP_MARGIN_FRAMES * self._frame_step, 0.05)
        self._skip_enabled = True
        self._skipped = False  # some packet went to the decoder with skip_frame=NONREF

    def pick(self, lo: float, hi: float) -> tuple[VideoFrame, float] | None:
        """The first frame in ``[lo, hi)``, else the nearest earlier frame."""
        self._advance(lo)
        if self._needs_prev(hi) and self._prev_may_be_skipped(lo):
            # The nearest earlier frame may be one the decoder skipped: decode again.
            self._skip_enabled = False
            self._seek(lo)
            self._advance(lo)
            self._skip_enabled = True
        head, prev = self.head, self.prev
        if head is not None and not self._needs_prev(hi):
            return head
        return prev if prev is not None else head

    def _needs_prev(self, hi: float) -> bool:
        """The segment ending at ``hi`` holds no frame: its pick is the earlier frame."""
        return self.prev is not None and (self.head is None or self.head[1] >= hi - _EPS)

    def _prev_may_be_skipped(self, lo: float) -> bool:
        """Frames within the margin before ``lo`` are always decoded; older may not be."""
        prev = self.prev
        return self._skipped and prev is not None and prev[1] < lo - self._margin

    def _advance(self, lo: float) -> None:
        if self.head is not None and self.head[1] >= lo - _EPS:
            return
        if self.exhausted:
            return
        self._target = lo
        if self._should_seek(lo):
            self._seek(lo)
            if self.head is not None and self.head[1] >= lo - _EPS:
                return
        while True:
            frame = self._next_frame()
            if frame is None:
                if self.head is not None:
                    self.prev = self.head
                self.head = None
                self.exhausted = True
                return
            if self.head is not None:
                self.prev = self.head
            self.head = frame
            if frame[1] >= lo - _EPS:
                return

    def _position(self) -> float:
        for item in (self.head, self.prev):
            if item is not None:
                return item[1]
        return 0.0 if self._frames is None else -math.inf

    def _should_seek(self, lo: float) -> bool:
        if self._pts_missing:
            return False
        position = self._position()
        keyframe = self._keyframe_before(lo)
        if keyframe is not None:
            return keyframe > position + _EPS
        return lo - position > _FORWARD_WINDOW_S

    def _keyframe_before(self, lo: float) -> float | None:
        entries = self.stream.index_entries
        if len(entries) == 0:
            return None
        found = entries.search_timestamp(self._to_pts(lo), backward=True)
        if found < 0:
            return None
        return float((entries[found].timestamp - self.start) * self.time_base)

    def _seek(self, lo: float) -> None:
        """Seek to the keyframe before ``lo``; back off when the demuxer overshoots."""
        back = 0.0
        while True:
            at = max(0.0, lo - back)
            self.container.seek(self._to_pts(at), stream=self.stream, backward=True)
            self._restart()
            self._skipped = False
            first = self._next_frame()
            if at == 0.0 or (first is not None and first[1] <= lo + _EPS):
                self.prev, self.head = None, first
                self.exhausted = first is None
                return
            back = back * 4 if back else 1.0

    def close(self) -> None:
        """Stop decoding; the frame generator must not outlive the container."""
        self._restart()
        self.head = self.prev = None

    def _restart(self) -> None:
        if self._frames is not None:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        self._frames = None

    def _next_frame(self) -> tuple[VideoFrame, float] | None:
        if self._frames is None:
            self._frames = self._frame_iter()
        return next(self._frames, None)

    def _frame_iter(self) -> Iterator[tuple[VideoFrame, float]]:
        ctx = self.stream.codec_context
        ctx.skip_frame = "DEFAULT"
        skipping = False
        for packet in self.container.demux(self.stream):
            far = (
                self._skip_enabled
                and packet.pts is not None
                and self._to_time(packet.pts) < self._target - self._margin
            )
            if far != skipping:
                ctx.skip_frame = "NONREF" if far else "DEFAULT"
                skipping = far
            self._skipped |= far
            for frame in packet.decode():
                if not isinstance(frame, VideoFrame):
                    continue
                yield frame, self._frame_time(frame)

    def _frame_time(self, frame: VideoFrame) -> float:
        if not self._seen_any:  # a stream's display matrix rides on every frame
            self.matrix = _frame_matrix(frame)
        if frame.pts is not None:
            t = self._to_time(frame.pts)
        else:
            self._pts_missing = True
            t = self.last_time + self._frame_step if self._seen_any else 0.0
        self._seen_any = True
        self.last_time = t
        time_base = frame.time_base or self.time_base
        shown = float(frame.duration * time_base) if frame.duration else self._frame_step
        self.end_time = max(self.end_time, t + shown)
        return t

    def _to_time(self, pts: int) -> float:
        return float((pts - self.start) * self.time_base)

    def _to_pts(self, t: float) -> int:
        return self.start + math.floor(t / self.time_base + _EPS)


def _frame_to_rgb(
    frame: VideoFrame,
    out_hw: tuple[int, int],
    resize_mode: ResizeMode,
    matrix: Sequence[int] | None,
    sample_aspect: Fraction | None,
) -> np.ndarray:
    """Scale (swscale, straight to RGB), orient and centre-crop one frame to ``out_hw``."""
    out_h, out_w = out_hw
    if resize_mode == "stretch":
        scaled_h, scaled_w = out_h, out_w
    else:
        disp_w, disp_h = _display_size(frame.width, frame.height, sample_aspect, matrix)
        scale = max(out_h / disp_h, out_w / disp_w)
        scaled_h = max(out_h, round(disp_h * scale))
        scaled_w = max(out_w, round(disp_w * scale))
    swap = _swaps_axes(matrix)
    width, height = (scaled_h, scaled_w) if swap else (scaled_w, scaled_h)
    rgb = frame.to_ndarray(width=width, height=height, format="rgb24")  # (h, w, 3)
    image = apply_display_matrix(rgb, matrix)  # (scaled_h, scaled_w, 3)
    top = (scaled_h - out_h) // 2
    left = (scaled_w - out_w) // 2
    return image[top : top + out_h, left : left + out_w]


def _swaps_axes(matrix: Sequence[int] | None) -> bool:
    if matrix is None:
        return False
    rotation = display_rotation(matrix)
    return not math.isnan(rotation) and round(rotation) % 180 == 90


def _frame_matrix(frame: VideoFrame) -> tuple[int, ...] | None:
    try:
        data = bytes(frame.side_data["DISPLAYMATRIX"])  # type: ignore[typeddict-item]
    except (KeyError, TypeError, ValueError):
        return None
    if len(data) < 36:
        return None
    return tuple(int(v) for v in np.frombuffer(data[:36], dtype=np.int32))


def _display_size(
    width: int, height: int, sample_aspect: Fraction | None, matrix: Sequence[int] | None
) -> tuple[int, int]:
    """(width, height) as shown: pixel aspect applied, axes swapped by a rotation."""
    if sample_aspect and sample_aspect > 0 and sample_aspect != 1:
        width = max(1, round(width * sample_aspect))
    return (height, width) if _swaps_axes(matrix) else (width, height)


def _time_base(stream: VideoStream) -> Fraction:
    return stream.time_base or Fraction(1, 90000)


def _start_pts(stream: VideoStream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """Duration of the video stream from its header or tag, else the container's."""
    time_base = _time_base(stream)
    candidates = []
    if stream.duration is not None and stream.duration > 0:
        candidates.append(float(stream.duration * time_base))
    tagged = _tag_seconds(stream.metadata.get("DURATION"))  # per-track tag in Matroska
    if tagged is not None:
        candidates.append(tagged)
    if container.duration is not None and container.duration > 0:
        late_start = 0.0  # the video stream may start after the container (audio first)
        if stream.start_time is not None and container.start_time is not None:
            late_start = float(stream.start_time * time_base) - container.start_time / av.time_base
        candidates.append(container.duration / av.time_base - max(0.0, late_start))
    for duration in candidates:
        if math.isfinite(duration) and 0 < duration < _MAX_SANE_DURATION_S:
            return duration
    return None


def _tag_seconds(tag: str | None) -> float | None:
    """Seconds from an ``HH:MM:SS.fraction`` duration tag; None when absent or malformed."""
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _scanned_duration(container: InputContainer, stream: VideoStream, name: str) -> float:
    """Duration from the last packet's end time: demuxing only, no decoding.

    A stream without timestamps (a raw elementary stream) counts packets at the frame
    rate instead.
    """
    end: int | None = None
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            continue
        packet_end = stamp + (packet.duration or 0)
        end = packet_end if end is None else max(end, packet_end)
    if count == 0:
        raise EmptyVideoError(f"{name}: the video stream holds no frames")
    if end is None:
        return count / float(stream.guessed_rate or stream.average_rate or 25)
    return max(0.0, float((end - _start_pts(stream)) * _time_base(stream)))


def _rewind(container: InputContainer, stream: VideoStream) -> bool:
    """Seek back to the start of the stream; False when the demuxer cannot."""
    try:
        container.seek(_start_pts(stream), stream=stream, backward=True)
    except av.error.FFmpegError:
        return False
    return True


def _open(source: VideoSource, name: str) -> InputContainer:
    file: str | BinaryIO = os.fspath(source) if isinstance(source, str | os.PathLike) else source
    try:
        return av.open(file, mode="r", metadata_errors="ignore")
    except _FILESYSTEM_ERRORS:
        raise
    except av.error.InvalidDataError as exc:
        raise NotAMediaFileError(f"{name}: not a media file ({_reason(exc)})") from exc
    except av.error.FFmpegError as exc:  # EOF or EIO inside the header: a truncated file
        raise CorruptVideoError(f"{name}: unreadable container header ({_reason(exc)})") from exc


def _is_still_image(container: InputContainer) -> bool:
    """FFmpeg's image demuxers (``png_pipe``, ``jpeg_pipe``, ``image2`` ...) hold a picture.

    ``gif_pipe`` is left out: an animated GIF is a video.
    """
    names = set(container.format.name.split(","))
    return bool(names & {"image2", "image2pipe"}) or any(
        n.endswith("_pipe") and n != "gif_pipe" for n in names
    )


def _video_stream(container: InputContainer, name: str) -> VideoStream:
    if _is_still_image(container):
        raise NoVideoStreamError(f"{name}: a still image ({container.format.name}), not a video")
    streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not streams:
        kinds = ", ".join(sorted({str(s.type) for s in container.streams})) or "none"
        raise NoVideoStreamError(f"{name}: no video stream (streams: {kinds})")
    stream = streams[0]
    if stream.codec_context is None:
        raise UnsupportedCodecError(f"{name}: no decoder for the video codec")
    return stream


def _output_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return hw


def _source_name(source: VideoSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"<{type(source).__name__}>"


def _reason(exc: av.error.FFmpegError) -> str:
    return exc.strerror or str(exc)
