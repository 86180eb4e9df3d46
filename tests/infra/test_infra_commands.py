"""The commands of infra/README.md, parsed by the real CLIs, against the cluster they target.

The README is the one place the submission commands are written; the RayJob entrypoint is
checked against it. Flags are parsed by the jobs' own settings models, custom resources
are looked up in the node types of ray_cluster.yaml and the KubeRay worker groups.
"""

from __future__ import annotations

import ast
import importlib.util
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
from infra_files import (
    REPO,
    cluster_spec,
    documented_commands,
    group_capacity,
    job_entrypoints,
    start_params_resources,
)

pytestmark = pytest.mark.usefixtures("clean_env")


def click_command(words: list[str]) -> tuple[click.Command, list[str], tuple[str, ...]]:
    """The click command a ``ray ...`` / ``serve ...`` line runs, its arguments, its path."""
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    command: click.Command = ray_cli if words[0] == "ray" else serve_cli
    args = words[1:]
    path: list[str] = []
    while isinstance(command, click.Group):
        assert args[0] in command.commands, f"no `{' '.join(words[: 2 + len(path)])}`"
        command, args = command.commands[args[0]], args[1:]
        path.append(command.name or "")
    return command, args, tuple(path)


def parsed_cli(words: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    command, args, path = click_command(words)
    ctx = command.make_context(" ".join(words[:2]), list(args))  # raises on unknown options
    return path, ctx.params


def check_module_main(module: str) -> None:
    """``python -m module`` works: the module exists and defines ``main`` and a __main__ guard."""
    spec = importlib.util.find_spec(module)
    assert spec and spec.origin, f"no module {module}"
    tree = ast.parse(Path(spec.origin).read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "main" in names, f"{module} has no main()"
    assert "__main__" in Path(spec.origin).read_text(), f"{module} has no __main__ guard"


def check_flags_exist(args: list[str], fields: set[str], model: str) -> None:
    """Every ``--kebab-flag`` names a field (``--no-x`` negates boolean ``x``)."""
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            assert name in fields or name.removeprefix("no_") in fields, f"{model}: {arg}"


def index_settings(args: list[str]) -> Any:
    from pipelines.settings import IndexSettings, parse_settings

    check_flags_exist(args, set(IndexSettings.model_fields), "IndexSettings")
    return parse_settings(IndexSettings, args, "python -m pipelines.index")


def documented_index() -> Any:
    (args,) = job_entrypoints("pipelines.index")
    return index_settings(args)


def worker_types(config: dict[str, Any]) -> list[dict[str, Any]]:
    head = config["head_node_type"]
    return [t for name, t in config["available_node_types"].items() if name != head]


def test_every_documented_ray_and_serve_command_parses() -> None:
    seen = set()
    for words in documented_commands("ray") + documented_commands("serve"):
        path, params = parsed_cli(words)
        seen.add((words[0], *path))
        if "cluster_config_file" in params:
            assert (REPO / params["cluster_config_file"]).is_file(), words
        if path == ("deploy",):
            assert (REPO / params["config_or_import_path"]).is_file(), words
    assert {("ray", "up"), ("ray", "down"), ("ray", "job", "submit")} <= seen
    assert ("serve", "deploy") in seen


def test_job_submissions_ship_the_working_dir_with_the_runtime_env() -> None:
    submits = [w for w in documented_commands("ray") if w[1:3] == ["job", "submit"]]
    assert len(submits) >= 2
    for words in submits:
        _, params = parsed_cli(words)
        assert params["working_dir"] == "."
        assert (REPO / params["runtime_env"]).is_file()
        assert params["address"].endswith(":8265")
        assert params["entrypoint"][:2] == ("python", "-m")
        check_module_main(params["entrypoint"][2])


def test_index_command_parses_with_the_jobs_settings() -> None:
    settings = documented_index()
    assert settings.source.startswith("s3://")
    assert settings.checkpoint and settings.checkpoint.startswith("s3://")
    assert settings.qdrant_url, "a cluster job writes to the Qdrant server"
    assert settings.use_gpu is True, "GPU workers scale from 0: auto-detect would pick CPU"
    assert settings.decode_resources and settings.model_resources


def test_index_actors_land_on_nodes_that_declare_their_resources_and_fit(
    cluster_config: dict[str, Any],
) -> None:
    settings = documented_index()
    types = worker_types(cluster_config)
    for name in settings.decode_resources:
        holders = [t for t in types if name in t["resources"]]
        assert holders, f"no node type declares {name}"
        assert all(t["resources"].get("GPU", 0) == 0 for t in holders), "decode is CPU work"
        assert all(t["resources"]["CPU"] >= settings.decode_cpus for t in holders)
        cores = sum(t["max_workers"] * t["resources"]["CPU"] for t in holders)
        assert settings.decode_actors * settings.decode_cpus <= cores
    for name in settings.model_resources:
        holders = [t for t in types if name in t["resources"]]
        assert holders, f"no node type declares {name}"
        assert all(t["resources"].get("GPU", 0) >= 1 for t in holders), "model needs a GPU"
        # a GPU model actor asks for 1 CPU with its GPU (pipelines/index.py build_dataset)
        assert all(t["resources"]["CPU"] >= 1 for t in holders)
        gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in holders)
        assert settings.model_actors <= gpus


@pytest.mark.parametrize("stem", ["raycluster", "rayjob-index", "rayservice"])
def test_kuberay_groups_declare_the_index_jobs_resources(
    stem: str, manifests: dict[str, dict[str, Any]]
) -> None:
    settings = documented_index()
    groups = cluster_spec(manifests[stem])["workerGroupSpecs"]
    for wanted, needs_gpu in (
        (settings.decode_resources, False),
        (settings.model_resources, True),
    ):
        for name in wanted:
            holders = [g for g in groups if name in start_params_resources(g)]
            assert holders, f"{stem}: no worker group declares {name}"
            assert all((group_capacity(g)[1] > 0) == needs_gpu for g in holders)
    if stem == "rayservice":
        return  # the API cluster only needs to accept the resources, not run a bulk job
    decode = [g for g in groups if set(settings.decode_resources) & set(start_params_resources(g))]
    cores = sum(g["maxReplicas"] * group_capacity(g)[0] for g in decode)
    assert settings.decode_actors * settings.decode_cpus <= cores
    model = [g for g in groups if set(settings.model_resources) & set(start_params_resources(g))]
    assert settings.model_actors <= sum(g["maxReplicas"] * group_capacity(g)[1] for g in model)


def test_rayjob_entrypoint_is_the_documented_index_command(
    manifests: dict[str, dict[str, Any]],
) -> None:
    words = shlex.split(manifests["rayjob-index"]["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "pipelines.index"]
    in_job = index_settings(words[3:]).model_dump()
    documented = documented_index().model_dump()
    # on Kubernetes the Qdrant URL comes from the pods' ADACLIP_QDRANT_URL instead
    in_job.pop("qdrant_url"), documented.pop("qdrant_url")
    assert in_job == documented


def test_train_command_parses_with_train_settings_and_fits_the_gpu_nodes(
    cluster_config: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    from train.settings import TrainSettings, parse_with_config

    (args,) = job_entrypoints("train.run")
    check_flags_exist(args, set(TrainSettings.model_fields), "TrainSettings")
    settings = parse_with_config(TrainSettings, args, "python -m train.run")
    assert settings.config and (REPO / settings.config).is_file()
    assert settings.use_gpu and settings.storage_path.startswith("s3://")
    workers = settings.workers
    most = workers[1] if isinstance(workers, tuple) else workers
    gpu_types = [t for t in worker_types(cluster_config) if t["resources"].get("GPU", 0)]
    assert most <= sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types)
    assert all(t["resources"]["CPU"] >= settings.cpus_per_worker for t in gpu_types)
    gpu_groups = [
        g
        for g in cluster_spec(manifests["raycluster"])["workerGroupSpecs"]
        if group_capacity(g)[1] > 0
    ]
    assert most <= sum(g["maxReplicas"] * group_capacity(g)[1] for g in gpu_groups)
    assert all(group_capacity(g)[0] >= settings.cpus_per_worker for g in gpu_groups)
