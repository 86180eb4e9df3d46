"""ray_cluster.yaml, the image and the runtime env: valid for Ray, consistent with the code."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from infra_files import CLUSTER_YAML, INFRA, PYPROJECT, REPO, cluster_spec, containers, pinned

DOCKERFILE = (INFRA / "docker" / "Dockerfile").read_text()


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


@pytest.mark.parametrize(
    "path",
    sorted([*INFRA.rglob("*.yaml"), CLUSTER_YAML]),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_yaml_parses_to_a_mapping(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(doc, dict) and doc for doc in docs)


def test_cluster_config_validates_against_rays_bundled_schema(
    cluster_config: dict[str, Any],
) -> None:
    jsonschema.validate(cluster_config, ray_schema())


def test_schema_check_is_not_vacuous(cluster_config: dict[str, Any]) -> None:
    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["head"]["resources"]["CPU"] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def test_cluster_config_passes_the_launchers_own_checks(cluster_config: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config))  # fills the AWS defaults
    validate_config(prepared)  # schema + head type + sum(min_workers) <= max_workers
    assert prepared["provider"]["type"] == "aws"


def test_head_node_takes_no_tasks(cluster_config: dict[str, Any]) -> None:
    head = cluster_config["available_node_types"][cluster_config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"], "the head must not be spot"


def test_worker_types_cover_cpu_and_gpu_work_within_bounds(
    cluster_config: dict[str, Any],
) -> None:
    workers = worker_types(cluster_config)
    gpu = [name for name, t in workers.items() if t["resources"].get("GPU", 0) > 0]
    cpu = [name for name, t in workers.items() if t["resources"].get("GPU", 0) == 0]
    assert gpu and cpu
    for node_type in workers.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
        assert node_type["resources"].get("CPU", 0) >= 1
    assert sum(t["max_workers"] for t in workers.values()) <= cluster_config["max_workers"]
    assert cluster_config["idle_timeout_minutes"] > 0


def test_cluster_runs_the_project_image(cluster_config: dict[str, Any]) -> None:
    image = cluster_config["docker"]["image"]
    assert image.endswith(f"adaclip-ray:{PYPROJECT['project']['version']}")
    setup = " ".join(cluster_config["setup_commands"])
    for package in ("adaclip", "pipelines", "train", "serve"):
        assert package in setup, f"setup_commands should check that {package} is installed"
    assert f"ray.__version__ == '{pinned('ray')}'" in setup


def test_kuberay_and_launcher_use_one_image_and_rays_version(
    cluster_config: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    image = cluster_config["docker"]["image"]
    assert pinned("ray") == ray.__version__
    for name, manifest in manifests.items():
        spec = cluster_spec(manifest)
        assert spec["rayVersion"] == ray.__version__, name
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        assert {c["image"] for g in groups for c in containers(g)} == {image}, name


def test_dockerfile_builds_the_pinned_project_on_cuda() -> None:
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", DOCKERFILE, flags=re.M)
    assert base and base.group(1).startswith("nvidia/cuda:")
    assert "FROM ${CUDA_IMAGE}" in DOCKERFILE
    # dependencies are read from pyproject.toml (torch 2.14.1, ray 2.60.0 ... as pinned)
    assert "['project']['dependencies']" in DOCKERFILE
    assert f'"ray[default]=={pinned("ray")}"' in DOCKERFILE
    assert pinned("torch") == "2.14.1"
    assert re.search(r"^RUN pip install --no-deps \.", DOCKERFILE, flags=re.M)
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY --chown=ray:ray {package} ./{package}" in DOCKERFILE, package
        ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text()
        assert f"!{package}/**" in ignore, package


def test_runtime_env_is_accepted_by_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**raw)  # raises on a malformed field (e.g. a non-string env var)
    assert env["working_dir"] == "."
    assert {".venv", ".git", ".adaclip"} <= set(env["excludes"])
    assert "pip" not in env and "uv" not in env, "dependencies belong in the image"
    assert not any("API_KEY" in name for name in env["env_vars"]), "no secrets in the repo"
