"""Checkpoint folders for the jobs: one cached download per node, and what the driver reads.

A checkpoint is a folder, local or ``s3://`` (``config.json`` + ``model.safetensors``).
:func:`fetch_checkpoint` is the one place an ``s3://`` checkpoint is downloaded: by the index
job's driver, its model actors, the Serve encoder and ``adaclip eval``. Copies live in a
node-local cache keyed by the URI and its objects' ETags, so the model actors of one node
share one download and a replaced checkpoint is fetched again. A download goes to a
temporary folder that is renamed into place when complete and removed on any failure; an
older version of the same URI is removed once a newer one is in place.

:func:`describe_checkpoint` reads what the index driver needs (model_id, N, K, D) from the
files alone: the driver builds no model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.object_fetch import is_s3_uri, local_path
from pipelines.sources import SourceError, download_folder, list_folder_objects

log = logging.getLogger(__name__)

CACHE_DIR_NAME = "adaclip-checkpoints"
_COMPLETE = ".complete"


def default_cache_root() -> Path:
    """The node-local cache folder: ``<system temp>/adaclip-checkpoints``."""
    return Path(tempfile.gettempdir()) / CACHE_DIR_NAME


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (between processes of one node)."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_checkpoint(
    uri: str, s3_endpoint_url: str | None = None, cache_root: str | Path | None = None
) -> Path:
    """A local folder holding checkpoint ``uri``; an ``s3://`` one is downloaded once per node.

    Args:
        uri: checkpoint folder, local path or ``s3://bucket/prefix``.
        s3_endpoint_url: S3-compatible endpoint, ``None`` for AWS.
        cache_root: cache folder (default :func:`default_cache_root`).

    Returns:
        The folder (a local ``uri`` as it is).

    Raises:
        SourceError: the folder does not exist, nothing is under the prefix, or S3 refused.
    """
    if not is_s3_uri(uri):
        path = local_path(uri).expanduser()
        if not path.is_dir():
            raise SourceError(f"checkpoint folder not found: {uri}")
        return path
    objects = list_folder_objects(uri, s3_endpoint_url)
    version = _digest(json.dumps(sorted(objects)))
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_digest(uri)}-{version}"
    target = root / name
    with _locked(root / f".{_digest(uri)}.lock"):
        if not (target / _COMPLETE).is_file():
            _download_into(uri, target, s3_endpoint_url)
        _evict_other_versions(root, uri, keep=name)
    return target


def _download_into(uri: str, target: Path, s3_endpoint_url: str | None) -> None:
    """Download into a temporary sibling of ``target``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        download_folder(uri, tmp, s3_endpoint_url=s3_endpoint_url)
        (tmp / _COMPLETE).write_text(uri)
        if target.exists():  # an incomplete copy left by a killed process
            shutil.rmtree(target)
        os.rename(tmp, target)
        log.info("checkpoint %s cached in %s", uri, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _evict_other_versions(root: Path, uri: str, keep: str) -> None:
    prefix = f"{_digest(uri)}-"
    for entry in root.iterdir():
        if entry.name.startswith(prefix) and entry.name != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the index driver needs to know about a checkpoint, read from its files."""

    uri: str  # what the model actors load (local folder or s3://)
    model_id: str
    num_candidates: int
    top_k: int
    embed_dim: int


def describe_checkpoint(uri: str, s3_endpoint_url: str | None = None) -> CheckpointInfo:
    """model_id, N, K and D of checkpoint ``uri`` without building the model.

    Raises:
        SourceError: the folder cannot be fetched.
        CheckpointError: it is not a checkpoint of a format this adaclip reads.
    """
    from adaclip.checkpoint import model_id_of, read_checkpoint_config

    local = fetch_checkpoint(uri, s3_endpoint_url)
    config, _ = read_checkpoint_config(local)
    assert config.clip.model_cfg is not None  # resolved when the checkpoint was written
    return CheckpointInfo(
        uri=uri,
        model_id=model_id_of(local),
        num_candidates=int(config.num_candidates),
        top_k=int(config.top_k),
        embed_dim=int(config.clip.model_cfg["embed_dim"]),
    )


def write_zero_shot_checkpoint(
    dest: str, arch: str, clip_weights: str | None, s3_endpoint_url: str | None = None
) -> str:
    """Write the zero-shot checkpoint (CLIP weights only, uniform K, mean pooling) at ``dest``
    (a local folder or ``s3://``) unless one is there; returns ``dest``.

    Run it in a Ray task, not in the index job's driver: it builds the model.
    """
    import torch

    from adaclip.checkpoint import CONFIG_FILE, save_checkpoint
    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP
    from pipelines.sources import upload_folder

    if not is_s3_uri(dest) and (Path(dest) / CONFIG_FILE).is_file():
        return dest
    if is_s3_uri(dest):
        try:
            fetch_checkpoint(dest, s3_endpoint_url)
            return dest
        except SourceError:
            pass  # not written yet
    torch.manual_seed(0)  # deterministic when no CLIP weights are given (tiny smoke runs)
    config = build_init_config(arch, clip_weights=clip_weights, zero_shot=True)
    model = AdaCLIP(config)
    if not is_s3_uri(dest):
        save_checkpoint(model, dest, kind="zero-shot")
        return dest
    with tempfile.TemporaryDirectory(prefix="adaclip-zero-shot-") as tmp:
        save_checkpoint(model, tmp, kind="zero-shot")
        upload_folder(tmp, dest, s3_endpoint_url)
    return dest
