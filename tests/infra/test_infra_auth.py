"""Ray token authentication (Ray 2.60) reaches every node and every documented client.

`ray up`: the launcher's initialization_commands write the env file that the container
gets with --env-file; they are run here with a stand-in `aws` and the file is read back by
Ray's own token loader. KubeRay: every manifest turns on `authOptions` with the Secret the
README creates. Both READMEs export the token settings before their first `ray job` or
`serve` command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_files import README, REPO, cluster_spec, containers, shell_commands

ROOT_README = REPO / "README.md"
RAY = str(Path(sys.executable).parent / "ray")
FAKE_AWS = """#!/bin/sh
# secretsmanager get-secret-value --secret-id ID ...: print the secret, or fail like aws
for arg in "$@"; do
  case "$prev" in --secret-id) id="$arg";; esac
  prev="$arg"
done
case "$id" in
  adaclip/ray-auth-token) echo "ray-token-123";;
  adaclip/qdrant-api-key) [ -n "$QDRANT_SECRET" ] && echo "$QDRANT_SECRET" || exit 254;;
  *) exit 254;;
esac
"""


def env_file_of(config: dict[str, Any]) -> str:
    options = config["docker"]["run_options"]
    (path,) = [o.split("=", 1)[1] for o in options if o.startswith("--env-file=")]
    return str(path)


def write_env_file(config: dict[str, Any], tmp_path: Path, qdrant_secret: str) -> str:
    """Run the initialization commands that write the env file (the ECR login aside) with
    a stand-in `aws`, into a file under tmp_path; return its text."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    target = env_file_of(config)
    local = tmp_path / "adaclip.env"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "QDRANT_SECRET": qdrant_secret}
    commands = [c for c in config["initialization_commands"] if target in c]
    assert commands, "no initialization command writes the --env-file"
    for command in commands:
        subprocess.run(["sh", "-c", command.replace(target, str(local))], env=env, check=True)
    return local.read_text()


@pytest.mark.parametrize("qdrant_secret", ["qdrant-key-456", ""])
def test_launcher_nodes_start_ray_with_the_clusters_token(
    cluster_config: dict[str, Any], tmp_path: Path, qdrant_secret: str
) -> None:
    text = write_env_file(cluster_config, tmp_path, qdrant_secret)
    values = dict(line.split("=", 1) for line in text.splitlines())
    assert values["RAY_AUTH_MODE"] == "token" and values["RAY_AUTH_TOKEN"] == "ray-token-123"
    assert values.get("ADACLIP_QDRANT_API_KEY") == (qdrant_secret or None)
    assert oct((tmp_path / "adaclip.env").stat().st_mode & 0o777) == "0o600"

    # Ray itself reads the token from that environment (no ~/.ray/auth_token here).
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env |= {"HOME": str(home), **values}
    shown = subprocess.run(
        [RAY, "get-auth-token"], env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and shown.stdout.strip() == "ray-token-123", shown.stderr


def test_launcher_token_secret_is_created_in_the_readme(cluster_config: dict[str, Any]) -> None:
    ids = set(re.findall(r"--secret-id (\S+)", " ".join(cluster_config["initialization_commands"])))
    created = {
        w[w.index("--name") + 1]
        for w in shell_commands(README.read_text())
        if w[:3] == ["aws", "secretsmanager", "create-secret"]
    }
    assert "adaclip/ray-auth-token" in ids and ids <= created


def test_kuberay_manifests_turn_on_token_auth_with_the_documented_secret(
    manifests: dict[str, dict[str, Any]],
) -> None:
    secrets = [
        w
        for w in shell_commands(README.read_text())
        if w[:2] == ["kubectl", "-n"] and w[3:6] == ["create", "secret", "generic"]
    ]
    made = {w[6]: w for w in secrets if w[2] == "adaclip"}
    for stem, manifest in manifests.items():
        spec = cluster_spec(manifest)
        auth = spec.get("authOptions")
        assert auth and auth["mode"] == "token", f"{stem}: no token authentication"
        name = auth["secretName"]
        assert name in made, f"{stem}: the README creates no Secret {name} in adaclip"
        assert any(a.startswith("--from-literal=auth_token=") for a in made[name]), made[name]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for container in containers(group):  # the operator owns these variables
                names = {e["name"] for e in container.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, stem


@pytest.mark.parametrize("readme", [ROOT_README, README], ids=["README", "infra/README"])
def test_clients_are_told_about_the_token_before_they_call_the_cluster(readme: Path) -> None:
    seen: set[str] = set()
    calls = 0
    for words in shell_commands(readme.read_text()):
        if words[0] == "export":
            seen |= {w.split("=", 1)[0] for w in words[1:]}
        talks_to_cluster = words[:2] == ["ray", "job"] or (
            words[0] == "serve" and words[1] in {"deploy", "status", "shutdown"}
        )
        if talks_to_cluster:
            calls += 1
            assert "RAY_AUTH_MODE" in seen, f"{readme.name}: {' '.join(words[:4])}"
    assert calls
