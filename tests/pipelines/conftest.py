"""Fixtures of the data-plane tests: a real S3 endpoint (moto's HTTP server on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_AWS_ENV


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (free port), with fake credentials in the env."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def make_bucket(endpoint: str, name: str) -> Any:
    """Create bucket ``name`` (if missing) on ``endpoint``; return a boto3 client for it."""
    from pipelines.sources import s3_client

    client = s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)
    return client


@pytest.fixture(name="make_bucket")
def make_bucket_fixture(s3_endpoint: str) -> Callable[[str, str], Any]:
    """The :func:`make_bucket` helper, with the S3 endpoint started: ``make_bucket(ep, name)``."""
    return make_bucket


@pytest.fixture
def bucket_name() -> str:
    """A fresh bucket name per test (the moto server is shared by the whole session)."""
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained AdaCLIP checkpoint folder (deterministic weights)."""
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.config import tiny_config
    from adaclip.model import AdaCLIP

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(AdaCLIP(tiny_config()), out)
    return out


def index_settings(source: str | Path, tmp: Path, checkpoint: Path, **kw: Any) -> Any:
    """Index-job settings sized for tests: 64 px frames, small batches, store under `tmp`."""
    from pipelines.settings import IndexSettings

    base: dict[str, Any] = {
        "source": str(source),
        "checkpoint": str(checkpoint),
        "qdrant_path": str(tmp / "qdrant"),
        "collection": "videos",
        "output": str(tmp / "job"),
        "frame_size": 64,
        "decode_actors": 1,
        "decode_batch_size": 2,
        "model_batch_size": 4,
        "upsert_batch_size": 2,
    }
    base.update(kw)
    return IndexSettings(**base)
