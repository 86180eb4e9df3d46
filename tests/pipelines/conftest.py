"""Fixtures of the data-plane tests: a real S3 endpoint (moto's HTTP server on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
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
