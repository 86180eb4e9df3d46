"""The two Ray Data stages of the ingestion job, as thin callable classes.

``DecodeVideos`` (CPU actors) fetches each object and decodes its N candidate frames;
``EmbedVideos`` (GPU actors when the cluster has GPUs) runs the policy, keeps K frames,
encodes only those with CLIP and aggregates them. Videos that fail are reported to the
``FailureLog`` actor and dropped from the stream, so one bad file never stops the job.
The pure work underneath (``decode_object``, ``embed_batch``) is tested without Ray.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.sources import FetchError, ObjectFetcher, download_folder

Batch = dict[str, np.ndarray]
ROW_FIELDS = ("uri", "video_id", "etag", "size_bytes")


@dataclass(frozen=True)
class DecodeSpec:
    """What the decode stage produces: N candidates of size x size pixels."""

    num_candidates: int
    frame_size: int
    frames_dir: bool = False  # each URI is a folder of pre-extracted frames
    frames_fps: float | None = None
    threads: int = 1  # FFmpeg decoding threads per actor


def failure_row(uri: str, stage: str, error: BaseException) -> dict[str, str]:
    """One line of ``failures.jsonl``."""
    reason = getattr(error, "reason", None) or type(error).__name__
    return {
        "uri": uri,
        "stage": stage,
        "reason": str(reason),
        "error_type": type(error).__name__,
        "message": str(error)[:500],
    }


def decode_object(
    fetcher: ObjectFetcher, uri: str, spec: DecodeSpec
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fetch one object and decode its candidates: frames (N,S,S,3), timestamps (N,), duration."""
    from adaclip.decode import decode_candidates

    if spec.frames_dir:
        from adaclip.frames_dir import decode_candidates_from_frames

        video = decode_candidates_from_frames(
            uri, spec.num_candidates, spec.frame_size, fps=spec.frames_fps
        )
        return video.frames, video.timestamps.astype(np.float64), float(video.duration)
    with fetcher.fetch(uri) as fh:
        video = decode_candidates(fh, spec.num_candidates, spec.frame_size, threads=spec.threads)
    return video.frames, video.timestamps.astype(np.float64), float(video.duration)


class DecodeVideos:
    """Ray Data UDF: listing rows -> rows with decoded candidate frames."""

    def __init__(self, fetcher: ObjectFetcher, spec: DecodeSpec, failure_log: Any) -> None:
        self.fetcher = fetcher
        self.spec = spec
        self.failure_log = failure_log

    def __call__(self, batch: Batch) -> Batch:
        from adaclip.decode import DecodeError

        out: dict[str, list[Any]] = {
            k: [] for k in (*ROW_FIELDS, "duration_s", "frames", "timestamps")
        }
        failures = []
        for i, uri in enumerate(batch["uri"]):
            try:
                frames, timestamps, duration = decode_object(self.fetcher, str(uri), self.spec)
            except FetchError as err:
                failures.append(failure_row(str(uri), "fetch", err))
                continue
            except (DecodeError, OSError, ValueError) as err:
                failures.append(failure_row(str(uri), "decode", err))
                continue
            for key in ROW_FIELDS:
                out[key].append(batch[key][i])
            out["duration_s"].append(duration)
            out["frames"].append(frames)
            out["timestamps"].append(timestamps)
        if failures:
            self.failure_log.record.remote(failures)
        return _to_batch(out, self.spec)


def _empty_listing_columns() -> Batch:
    """The listing columns of a batch with no rows (every video of it failed)."""
    return {
        "uri": np.array([], dtype=object),
        "video_id": np.array([], dtype=object),
        "etag": np.array([], dtype=object),
        "size_bytes": np.array([], dtype=np.int64),
        "duration_s": np.array([], dtype=np.float64),
    }


def _to_batch(columns: dict[str, list[Any]], spec: DecodeSpec) -> Batch:
    n, s = spec.num_candidates, spec.frame_size
    if not columns["uri"]:  # every video of the batch failed: an empty, typed batch
        return {
            **_empty_listing_columns(),
            "frames": np.zeros((0, n, s, s, 3), dtype=np.uint8),
            "timestamps": np.zeros((0, n), dtype=np.float64),
        }
    return {
        "uri": np.array(columns["uri"], dtype=object),
        "video_id": np.array(columns["video_id"], dtype=object),
        "etag": np.array(columns["etag"], dtype=object),
        "size_bytes": np.asarray(columns["size_bytes"], dtype=np.int64),
        "duration_s": np.asarray(columns["duration_s"], dtype=np.float64),
        "frames": np.stack(columns["frames"]),  # (B, N, S, S, 3)
        "timestamps": np.stack(columns["timestamps"]),  # (B, N)
    }


def load_model(checkpoint: str, s3_endpoint_url: str | None, device: str) -> Any:
    """Load a checkpoint folder (local, or s3:// copied to a temp folder first)."""
    from adaclip.checkpoint import load_checkpoint

    local = checkpoint
    if checkpoint.startswith("s3://"):
        dest = Path(tempfile.mkdtemp(prefix="adaclip-ckpt-"))
        local = str(download_folder(checkpoint, dest, s3_endpoint_url=s3_endpoint_url))
    return load_checkpoint(local, device=device)


def embed_batch(model: Any, batch: Batch) -> Batch:
    """Encode a decoded batch: CLIP on the K kept frames only, then aggregation.

    Returns the columns of the index rows: video_vector (B,D), frame_vectors (B,K,D),
    frame_ts (B,K) in time order, frame_weights (B,K), plus the listing fields.
    """
    import torch

    frames = torch.from_numpy(np.ascontiguousarray(batch["frames"]))  # (B, N, S, S, 3)
    enc = model.encode_video(frames)
    idx = enc.indices.cpu().numpy()  # (B, K) ascending
    frame_ts = np.take_along_axis(batch["timestamps"], idx, axis=1)
    out: Batch = {key: batch[key] for key in (*ROW_FIELDS, "duration_s")}
    out["video_vector"] = enc.video.float().cpu().numpy()
    out["frame_vectors"] = enc.frames.float().cpu().numpy()
    out["frame_ts"] = frame_ts.astype(np.float64)
    out["frame_weights"] = enc.weights.float().cpu().numpy()
    return out


class EmbedVideos:
    """Ray Data UDF: decoded rows -> embedding rows. Loads the model once per actor."""

    def __init__(self, checkpoint: str, s3_endpoint_url: str | None, use_gpu: bool) -> None:
        import torch

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_model(checkpoint, s3_endpoint_url, device)

    def __call__(self, batch: Batch) -> Batch:
        if len(batch["uri"]) == 0:
            return embed_batch_empty(self.model)
        return embed_batch(self.model, batch)


def embed_batch_empty(model: Any) -> Batch:
    k, d = model.config.top_k, model.embed_dim
    return {
        **_empty_listing_columns(),
        "video_vector": np.zeros((0, d), dtype=np.float32),
        "frame_vectors": np.zeros((0, k, d), dtype=np.float32),
        "frame_ts": np.zeros((0, k), dtype=np.float64),
        "frame_weights": np.zeros((0, k), dtype=np.float32),
    }


class FailureLog:
    """A small Ray actor collecting failure rows from every stage (no CPU reserved)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.started = time.time()

    def record(self, rows: list[dict[str, str]]) -> None:
        self.rows.extend(rows)

    def count(self) -> int:
        return len(self.rows)

    def drain(self) -> list[dict[str, str]]:
        rows, self.rows = self.rows, []
        return rows
