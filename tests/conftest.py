"""Session-wide test setup: offline hub, one shared Ray cluster, GPU marker handling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Fake credentials for the loopback S3 endpoint, set before any Ray worker starts so the
# decode actors see them too; never the developer's own AWS config.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Never read the developer's own config or ask an instance metadata service.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    # The endpoint is local: keep any proxy settings of the machine out of the way.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
os.environ.pop("AWS_PROFILE", None)
os.environ.update(FAKE_AWS_ENV)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster for the whole test session (2 CPUs)."""
    import ray

    if not ray.is_initialized():
        # "local": a new cluster even when another one runs on this machine (ray start)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _stop_store_actors() -> Iterator[None]:
    """End the detached store actors a test module started (they outlive jobs by design)."""
    yield
    import contextlib
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from pipelines.store.actor import list_store_actors, stop_store_actor

    for _, handle in list_store_actors():
        with contextlib.suppress(Exception):  # already ending: killed anyway
            stop_store_actor(handle, timeout_s=30)
