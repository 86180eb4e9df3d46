"""The index job against an S3 endpoint that checks credentials (a moto server with IAM
authentication on, in its own process): wrong credentials, no credentials, a user that may
not list, and a user denied one object."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adaclip.synth import generate_dataset
from pipelines.index import main
from tests.conftest import FAKE_AWS_ENV
from tests.fresh_ray import run_with_own_cluster

pytestmark = pytest.mark.integration
BUCKET = "private-media"
DENIED = "clips/video00001.mp4"


@dataclass(frozen=True)
class AuthS3:
    endpoint: str
    keys: dict[str, tuple[str, str]]  # user -> (access key id, secret)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    """A moto server whose requests must be signed by its IAM users' keys."""
    import boto3

    port = _free_port()
    env = {**os.environ, **FAKE_AWS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        # set up with authentication off: a bucket, videos, two users with policies
        session = boto3.session.Session(
            aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
        )
        s3 = session.client("s3", endpoint_url=endpoint)
        iam = session.client("iam", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        videos = tmp_path_factory.mktemp("auth-videos")
        generate_dataset(videos, num_videos=3, seed=9, frames_per_video=16)
        for path in sorted(videos.glob("*.mp4")):
            s3.upload_file(str(path), BUCKET, f"clips/{path.name}")
        arn = f"arn:aws:s3:::{BUCKET}"
        policies = {
            "reader": _policy(
                {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": arn},
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{arn}/*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"{arn}/{DENIED}"},
            ),
            "nolist": _policy(
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{arn}/*"}
            ),
        }
        keys = {}
        for user, doc in policies.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=doc)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            b"0",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5)  # authentication on from here
        yield AuthS3(endpoint, keys)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _use_keys(monkeypatch: pytest.MonkeyPatch, key: tuple[str, str] | None) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_SECURITY_TOKEN", raising=False)
    if key is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key[1])


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("wrong", "access_denied"),  # an access key the endpoint does not know
        ("none", "no_credentials"),  # boto3's chain finds nothing
        ("nolist", "access_denied"),  # may read objects, may not list them
    ],
)
def test_listing_refused_is_one_clear_error_and_writes_nothing(
    auth_s3: AuthS3,
    who: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = {"wrong": ("AKIAWRONGWRONGWRONG1", "nope"), "none": None}
    _use_keys(monkeypatch, keys.get(who, auth_s3.keys.get(who)))
    out, qdrant = tmp_path / "out", tmp_path / "qdrant"
    rc = main([
        f"s3://{BUCKET}/clips/", "--s3-endpoint-url", auth_s3.endpoint,
        "--checkpoint", str(tmp_path / "never-read"), "--qdrant-path", str(qdrant),
        "--output", str(out), "--max-retries", "0",
    ])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"adaclip index: cannot list s3://{BUCKET}/clips/ ({reason})"), err
    assert "\n" not in err
    assert not out.exists() and not qdrant.exists()  # nothing written


JOB_SCRIPT = """
def main(args):
    import os
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = args["key"]
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    import ray
    from pipelines.index import run_index
    from pipelines.settings import IndexSettings

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_index(IndexSettings(**args["settings"]))
    finally:
        ray.shutdown()
    return {"listed": summary.listed, "indexed": summary.indexed, "failed": summary.failed}
"""


def test_one_denied_object_is_one_fetch_failure_row(
    auth_s3: AuthS3, checkpoint: Path, tmp_path: Path
) -> None:
    settings = {
        "source": f"s3://{BUCKET}/clips/",
        "s3_endpoint_url": auth_s3.endpoint,
        "checkpoint": str(checkpoint),
        "qdrant_path": str(tmp_path / "qdrant"),
        "collection": "videos",
        "output": str(tmp_path / "job"),
        "frame_size": 64,
        "decode_actors": 1,
        "max_retries": 1,
    }
    args = {"key": auth_s3.keys["reader"], "settings": settings}
    result = run_with_own_cluster(JOB_SCRIPT, args, tmp_path, timeout_s=240)
    assert result == {"listed": 3, "indexed": 2, "failed": 1}
    rows = [json.loads(x) for x in (tmp_path / "job" / "failures.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["uri"] == f"s3://{BUCKET}/{DENIED}"
    assert (rows[0]["stage"], rows[0]["reason"]) == ("fetch", "access_denied")
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["failed_by_stage"] == {"fetch": 1} and summary["finished"]
