"""KubeRay manifests: the fields their CRDs (ray.io/v1) require, the Serve app they deploy."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml
from infra_files import (
    GPU_LIMIT,
    INFRA,
    KUBERAY,
    REPO,
    cluster_spec,
    containers,
    group_capacity,
    load_yaml,
    pinned,
    start_params_resources,
)

KINDS = {"raycluster": "RayCluster", "rayjob-index": "RayJob", "rayservice": "RayService"}


def serve_config_v2(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    raw = manifests["rayservice"]["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "serveConfigV2 is a YAML document inside a string"
    return yaml.safe_load(raw)


def env_names(manifest: dict[str, Any]) -> set[str]:
    spec = cluster_spec(manifest)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return {e["name"] for g in groups for c in containers(g) for e in c.get("env", [])}


@pytest.mark.parametrize("stem", sorted(KINDS))
def test_manifest_has_the_fields_its_crd_requires(
    stem: str, manifests: dict[str, dict[str, Any]]
) -> None:
    manifest = manifests[stem]
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == KINDS[stem]
    assert manifest["metadata"]["name"]
    spec = cluster_spec(manifest)
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"]["num-cpus"] == "0", "the head takes no tasks"
    assert containers(head) and all(c["name"] and c["image"] for c in containers(head))
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)) >= 2
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert containers(group) and all(c["name"] and c["image"] for c in containers(group))
    for group in [head, *spec["workerGroupSpecs"]]:
        # the CRD types rayStartParams as map[string]string: a bare 0 is rejected
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    if spec.get("enableInTreeAutoscaling"):
        assert any(g["minReplicas"] < g["maxReplicas"] for g in spec["workerGroupSpecs"])


@pytest.mark.parametrize("stem", sorted(KINDS))
def test_each_group_is_either_cpu_or_gpu_work(
    stem: str, manifests: dict[str, dict[str, Any]]
) -> None:
    """cpu_worker only on GPU-less pods, gpu_worker only on pods with a GPU limit."""
    groups = cluster_spec(manifests[stem])["workerGroupSpecs"]
    declared: dict[str, set[bool]] = {}
    for group in groups:
        _, gpus = group_capacity(group)
        resources = containers(group)[0]["resources"]
        assert resources["requests"].get(GPU_LIMIT) == resources["limits"].get(GPU_LIMIT)
        for name, amount in start_params_resources(group).items():
            assert amount > 0
            declared.setdefault(name, set()).add(gpus > 0)
    assert declared, f"{stem}: no worker group declares a custom resource"
    assert all(len(kinds) == 1 for kinds in declared.values()), declared


def test_rayjob_runs_the_index_job_and_cleans_up(manifests: dict[str, dict[str, Any]]) -> None:
    spec = manifests["rayjob-index"]["spec"]
    assert spec["entrypoint"].startswith("python -m pipelines.index ")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())
    assert "working_dir" not in runtime_env, "a RayJob runs the code baked into the image"


def test_rayservice_deploys_infra_serve_config(manifests: dict[str, dict[str, Any]]) -> None:
    config = serve_config_v2(manifests)
    assert config == load_yaml(INFRA / "serve_config.yaml")
    assert manifests["rayservice"]["spec"]["rayClusterConfig"]["headGroupSpec"]


def test_serve_configs_name_one_import_path_that_exists(
    manifests: dict[str, dict[str, Any]],
) -> None:
    paths = {app["import_path"] for app in serve_config_v2(manifests)["applications"]}
    repo_config = REPO / "serve" / "config.yaml"
    paths |= {app["import_path"] for app in load_yaml(repo_config)["applications"]}
    assert paths == {"serve.app:build_app"}
    (import_path,) = paths
    module, attr = import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_serve_args_are_serve_settings(manifests: dict[str, dict[str, Any]]) -> None:
    from serve.settings import ServeSettings

    (app,) = serve_config_v2(manifests)["applications"]
    args = app["args"]
    assert set(args) <= set(ServeSettings.model_fields), set(args) - set(ServeSettings.model_fields)
    settings = ServeSettings(**args)  # validates types and bounds
    assert settings.use_gpu is True, "GPU workers scale from 0: do not auto-detect at build"
    groups = manifests["rayservice"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu_pods = sum(g["maxReplicas"] * group_capacity(g)[1] for g in groups)
    assert gpu_pods >= settings.max_replicas, "every encoder replica needs a GPU pod"
    assert any(group_capacity(g)[1] == 0 for g in groups), "ingress needs CPU-only pods"


@pytest.mark.parametrize("stem", sorted(KINDS))
def test_pod_env_vars_are_settings_the_code_reads(
    stem: str, manifests: dict[str, dict[str, Any]]
) -> None:
    from pipelines.settings import IndexSettings
    from serve.settings import ServeSettings

    fields = set(IndexSettings.model_fields) | set(ServeSettings.model_fields)
    for name in env_names(manifests[stem]):
        if name.startswith("ADACLIP_"):
            assert name.removeprefix("ADACLIP_").lower() in fields, name


def test_secrets_come_from_one_secret_that_qdrant_also_uses(
    manifests: dict[str, dict[str, Any]],
) -> None:
    refs = set()
    for manifest in manifests.values():
        spec = cluster_spec(manifest)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for env in containers(group)[0].get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((env["name"], ref["name"], ref["key"]))
    assert ("ADACLIP_QDRANT_API_KEY", "qdrant-api-key", "api-key") in refs
    # the search API's key: only from its own Secret, never a literal in a manifest
    assert refs <= {
        ("ADACLIP_QDRANT_API_KEY", "qdrant-api-key", "api-key"),
        ("ADACLIP_API_KEY", "adaclip-api-key", "api-key"),
    }
    service = manifests["rayservice"]
    assert ("ADACLIP_API_KEY", "adaclip-api-key", "api-key") in {
        (e["name"], e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for g in [cluster_spec(service)["headGroupSpec"]]
        for e in containers(g)[0].get("env", [])
        if "valueFrom" in e
    }
    qdrant = load_yaml(INFRA / "qdrant" / "values.yaml")
    assert qdrant["apiKey"]["valueFrom"]["secretKeyRef"] == {
        "name": "qdrant-api-key",
        "key": "api-key",
    }


def test_common_objects_are_the_ones_the_pods_reference(
    manifests: dict[str, dict[str, Any]],
) -> None:
    common = list(yaml.safe_load_all((KUBERAY / "common.yaml").read_text()))
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in common}
    for manifest in manifests.values():
        spec = cluster_spec(manifest)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert ("ServiceAccount", pod["serviceAccountName"]) in names
            for volume in pod.get("volumes", []):
                claim = volume.get("persistentVolumeClaim")
                if claim:
                    assert ("PersistentVolumeClaim", claim["claimName"]) in names


def test_qdrant_deployments_persist_storage_and_snapshots() -> None:
    compose = load_yaml(INFRA / "qdrant" / "docker-compose.yaml")
    qdrant = compose["services"]["qdrant"]
    env = qdrant["environment"]
    assert env["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY:?")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in qdrant["volumes"]}
    assert mounts["/qdrant/storage"] in compose["volumes"]
    assert mounts["/qdrant/snapshots"] in compose["volumes"]
    assert env["QDRANT__STORAGE__SNAPSHOTS_PATH"] == "/qdrant/snapshots"
    assert "/snapshots" in " ".join(compose["services"]["snapshotter"]["command"])
    values = load_yaml(INFRA / "qdrant" / "values.yaml")
    assert values["persistence"]["size"] and values["snapshotPersistence"]["enabled"]
    assert values["config"]["storage"]["snapshots_path"] == "/qdrant/snapshots"
    # server and client on one minor version (the client is pinned in pyproject.toml)
    client = pinned("qdrant-client")
    for tag in (qdrant["image"].split(":v")[1], values["image"]["tag"].lstrip("v")):
        assert tag.split(".")[:2] == client.split(".")[:2]
    cron = load_yaml(INFRA / "qdrant" / "snapshot-cronjob.yaml")
    assert cron["kind"] == "CronJob" and "/snapshots" in str(cron["spec"]["jobTemplate"])
