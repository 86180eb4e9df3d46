"""Fixtures of the infra tests (helpers live in infra_files.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from infra_files import CLUSTER_YAML, KUBERAY, REPO, load_yaml


@pytest.fixture(scope="session")
def cluster_config() -> dict[str, Any]:
    return load_yaml(CLUSTER_YAML)


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    """The KubeRay custom resources, by file stem."""
    return {
        stem: load_yaml(KUBERAY / f"{stem}.yaml")
        for stem in ("raycluster", "rayjob-index", "rayservice")
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are parsed from the documented flags only, not from this shell's ADACLIP_*."""
    for name in list(os.environ):
        if name.startswith("ADACLIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(REPO)  # relative paths in the commands (--config) are repo-relative
