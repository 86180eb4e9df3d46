"""The deployment files as data and the commands documented in infra/README.md.

Nothing in ``infra/`` is imported at run time; the infra tests read it as YAML / Markdown
and check it against what the code requests (settings models, CLIs, Ray's own schema).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CLUSTER_YAML = REPO / "ray_cluster.yaml"
KUBERAY = INFRA / "kuberay"
README = INFRA / "README.md"
GPU_LIMIT = "nvidia.com/gpu"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    """The ``==`` version pyproject.toml pins for ``package`` (extras ignored)."""
    for dep in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The RayClusterSpec inside a RayCluster, RayJob or RayService manifest."""
    spec = manifest["spec"]
    return {
        "RayCluster": lambda: spec,
        "RayJob": lambda: spec["rayClusterSpec"],
        "RayService": lambda: spec["rayClusterConfig"],
    }[manifest["kind"]]()


def start_params_resources(group: dict[str, Any]) -> dict[str, float]:
    """Custom resources of a KubeRay group: ``rayStartParams.resources`` is a JSON object
    inside a JSON string (``'"{\\"cpu_worker\\": 1000}"'``), as ``ray start`` receives it."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    value = json.loads(raw)
    return json.loads(value) if isinstance(value, str) else value


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def cpu_quantity(value: str | int | float) -> float:
    """Kubernetes CPU quantity ("3", "500m", 2) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_capacity(group: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees on one pod of a KubeRay group: the first container's limits."""
    limits = containers(group)[0]["resources"]["limits"]
    return cpu_quantity(limits["cpu"]), float(limits.get(GPU_LIMIT, 0))


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command of the ```bash blocks of a Markdown file, continuations joined, split
    like a POSIX shell would (comments and a trailing ``&`` dropped). Heredoc bodies are
    skipped."""
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = block.replace("\\\n", " ")
        heredoc: str | None = None
        for line in text.splitlines():
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            match = re.search(r"<<'?(\w+)'?", line)
            if match:
                heredoc = match.group(1)
                line = line[: match.start()]
            words = shlex.split(line, comments=True)
            while words and words[-1] == "&":
                words.pop()
            if words:
                commands.append(words)
    return commands


def documented_commands(program: str) -> list[list[str]]:
    return [words for words in shell_commands(README.read_text()) if words[0] == program]


def job_entrypoints(module: str) -> list[list[str]]:
    """Arguments after ``python -m MODULE`` of every documented ``ray job submit``."""
    found = []
    for words in documented_commands("ray"):
        if words[1:3] == ["job", "submit"] and "--" in words:
            entry = words[words.index("--") + 1 :]
            if entry[:3] == ["python", "-m", module]:
                found.append(entry[3:])
    return found
