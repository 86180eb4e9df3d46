"""The README's local `ray job submit` block, run for real: its own `ray start --head` on
free ports, the README's exports and commands in order, a tiny synthetic folder and a tiny
checkpoint. The job is submitted, finishes, indexes every video, and `ray job logs` shows
its progress. A `ray` command without the README's exports is refused by the cluster.

The cluster lives in a temporary HOME (the token `ray get-auth-token --generate` writes)
and a temporary --temp-dir; it is stopped at the end, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
START_PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)
VIDEOS = 3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def local_job_block() -> list[list[str]]:
    """The commands of the README's bash block that starts a local cluster."""
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        commands = [
            shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
        ]
        commands = [c for c in commands if c]
        if ["ray", "start", "--head"] in commands:
            return commands
    raise AssertionError("the README has no bash block with `ray start --head`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_entrypoint_paths(words: list[str], values: dict[str, str]) -> list[str]:
    """``words`` with the index job's source (first word after the module) and the values
    of the flags in ``values`` replaced; every other word is the README's."""
    out = list(words)
    module_at = out.index("pipelines.index")
    out[module_at + 1] = values["SOURCE"]
    for i, word in enumerate(out):
        if word in values:
            out[i + 1] = values[word]
    return out


def stop_cluster(head: subprocess.Popen[bytes], temp_dir: str) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to its process
    group and to any process that still runs under this cluster's temp dir."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=10)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture
def job_inputs(tmp_path: Path) -> dict[str, str]:
    """A synthetic folder of three clips and a tiny untrained checkpoint."""
    from adaclip.checkpoint import save_checkpoint
    from adaclip.config import tiny_config
    from adaclip.model import AdaCLIP
    from adaclip.synth import generate_dataset

    generate_dataset(tmp_path / "bucket", VIDEOS, seed=0, frames_per_video=16, size=32)
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in sorted((tmp_path / "bucket").rglob("*.mp4")):
        shutil.copy(clip, videos / clip.name)
    assert len(list(videos.iterdir())) == VIDEOS
    save_checkpoint(AdaCLIP(tiny_config()), tmp_path / "ckpt")
    return {
        "SOURCE": str(videos),
        "--checkpoint": str(tmp_path / "ckpt"),
        "--qdrant-path": str(tmp_path / "qdrant"),
        "--output": str(tmp_path / "out"),
    }


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell with the virtualenv activated, in a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    home = tmp_path / "home"
    home.mkdir()
    env |= {
        "HOME": str(home),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture
def ray_temp_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths are bounded
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(words: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        words, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for_job_api(url: str, token: str, head: subprocess.Popen[bytes], log: Path) -> None:
    request = urllib.request.Request(
        f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert head.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("the job API did not come up:\n" + log.read_text()[-3000:])


def test_readme_job_submit_runs_on_a_local_cluster(
    job_inputs: dict[str, str], shell_env: dict[str, str], ray_temp_dir: str, tmp_path: Path
) -> None:
    commands = local_job_block()
    env = dict(shell_env)
    for words in commands:  # the exports apply to every command of the block
        if words[0] == "export":
            name, value = words[1].split("=", 1)
            env[name] = value
    assert env.get("RAY_AUTH_MODE") == "token"

    steps = [w for w in commands if w[0] == "ray"]
    assert [w[:2] for w in steps] == [["ray", "get-auth-token"], ["ray", "start"], ["ray", "job"]]
    generate, start, submit = steps

    generated = run(generate, env, timeout=60)
    assert generated.returncode == 0, generated.stderr
    token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    assert token and generated.stdout.strip() == token

    ports = {name: free_port() for name in START_PORTS}
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    own_cluster = [
        "--block",
        f"--temp-dir={ray_temp_dir}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=2",
        "--object-store-memory=200000000",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = tmp_path / "head.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [*start, *own_cluster], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_job_api(dashboard, token, head, log)

        # Without the README's export the cluster refuses the client.
        bare = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = run(["ray", "job", "list", "--address", dashboard], bare, timeout=120)
        assert refused.returncode != 0
        assert "no authentication token was found" in refused.stderr + refused.stdout

        words = with_entrypoint_paths(submit, job_inputs)
        words[words.index("--address") + 1] = dashboard
        submission_id = f"readme-index-{os.getpid()}"
        words[3:3] = ["--submission-id", submission_id]
        submitted = run(words, env, timeout=420)
        detail = submitted.stdout[-4000:] + submitted.stderr[-4000:]
        assert submitted.returncode == 0, detail
        assert f"Job '{submission_id}' succeeded" in submitted.stdout + submitted.stderr, detail

        logs = run(["ray", "job", "logs", "--address", dashboard, submission_id], env, 120)
        assert logs.returncode == 0, logs.stderr
        assert f"indexed {VIDEOS}/{VIDEOS} videos" in logs.stdout, logs.stdout[-3000:]
        stopped = run(  # the job's store actor flushes and lets the folder go, as a user would
            [str(VENV_BIN / "adaclip"), "store", "stop", "--all", "--ray-address",
             f"127.0.0.1:{ports['port']}"],
            env, 120,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr[-3000:]
    finally:
        stop_cluster(head, ray_temp_dir)

    summary = json.loads((Path(job_inputs["--output"]) / "summary.json").read_text())
    assert summary["indexed"] == VIDEOS and summary["failed"] == 0, summary
    listed = subprocess.run(
        [sys.executable, "-m", "pipelines.ls", "--collection", "demo", "--qdrant-path",
         job_inputs["--qdrant-path"], "--json"],
        cwd=REPO, env=shell_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    uris = sorted(Path(r["uri"]).name for r in rows)
    assert uris == sorted(p.name for p in Path(job_inputs["SOURCE"]).iterdir()), listed.stderr
