"""``adaclip watch``: S3 events through SQS (moto server on 127.0.0.1) and polling, with the
search API answering from the same embedded store meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaclip.synth import generate_dataset
from pipelines.watch import Watcher, WatchSettings, latest_per_uri, parse_s3_event

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    generate_dataset(root, num_videos=8, seed=5, frames_per_video=16)
    return sorted(root.glob("video*.mp4"))


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def sqs_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint)


def notifying_bucket(
    make_bucket: Any, endpoint: str, bucket: str, visibility_s: int = 30
) -> tuple[Any, str]:
    """A bucket whose ObjectCreated/ObjectRemoved events under clips/ go to a new queue."""
    s3 = make_bucket(endpoint, bucket)
    sqs = sqs_client(endpoint)
    url = sqs.create_queue(
        QueueName=f"{bucket}-events", Attributes={"VisibilityTimeout": str(visibility_s)}
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "clips/"}]}},
                }
            ]
        },
    )
    return s3, url


def watch_settings(source: str, tmp: Path, checkpoint: Path, **kw: Any) -> WatchSettings:
    base: dict[str, Any] = {
        "source": source,
        "checkpoint": str(checkpoint),
        "qdrant_path": str(tmp / "qdrant"),
        "collection": "videos",
        "output": str(tmp / "watch"),
        "frame_size": 64,
        "decode_cpus": 0.25,
        "model_cpus": 0.25,
        "batch_size": 2,
        "batch_wait_s": 0.5,
        "status_every_s": 2.0,
    }
    base.update(kw)
    return WatchSettings(**base)


def listed(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """uri -> etag, as ``adaclip ls --json`` prints them (through the store actor)."""
    from pipelines.ls import main as ls_main

    capsys.readouterr()
    assert ls_main(["--qdrant-path", str(folder), "--collection", "videos", "--json"]) == 0
    # the watcher thread prints its progress to the same captured stdout: keep ls's JSON rows
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in out if line.startswith("{")]
    return {r["uri"]: r["etag"] for r in rows}


def test_s3_event_parsing() -> None:
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": "b"},
                        "object": {"key": "clips/a+b%2Bc.mp4", "eTag": "e1", "size": 5,
                                   "sequencer": "0A"},
                    },
                },
                {
                    "eventName": "ObjectRemoved:Delete",
                    "s3": {"bucket": {"name": "b"},
                           "object": {"key": "clips/a+b%2Bc.mp4", "sequencer": "0B"}},
                },
                {"eventName": "ObjectCreated:Put",
                 "s3": {"bucket": {"name": "b"}, "object": {"key": "other/x.mp4"}}},
                {"eventName": "ObjectCreated:Put",
                 "s3": {"bucket": {"name": "b"}, "object": {"key": "clips/notes.txt"}}},
            ]
        }
    )  # fmt: skip
    changes = parse_s3_event(body, "b", "clips/")
    assert [(c.uri, c.kind) for c in changes] == [
        ("s3://b/clips/a b+c.mp4", "put"),
        ("s3://b/clips/a b+c.mp4", "remove"),
    ]
    assert [c.kind for c in latest_per_uri(reversed(changes))] == ["remove"]  # by sequencer
    assert parse_s3_event(json.dumps({"Event": "s3:TestEvent"}), "b", "clips/") == []
    sns = json.dumps({"Type": "Notification", "Message": body})
    assert len(parse_s3_event(sns, "b", "clips/")) == 2
    with pytest.raises(ValueError):
        parse_s3_event("[1, 2]", "b", "clips/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_watch_sqs_while_serving(
    ray_cluster: Any,
    s3_endpoint: str,
    make_bucket: Any,
    bucket_name: str,
    clips: list[Path],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ray import serve

    from serve.app import build_app
    from serve.cli import wait_ready

    s3, queue_url = notifying_bucket(make_bucket, s3_endpoint, bucket_name)
    settings = watch_settings(
        f"s3://{bucket_name}/clips/",
        tmp_path,
        checkpoint,
        queue_url=queue_url,
        s3_endpoint_url=s3_endpoint,
        sqs_endpoint_url=s3_endpoint,
    )
    watcher = Watcher(settings)  # creates the collection, through the store actor
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = {
            "checkpoint": str(checkpoint),
            "qdrant_path": str(tmp_path / "qdrant"),
            "collection": "videos",
            "encoder_cpus": 0.25,
            "ingress_cpus": 0.1,
        }
        serve.run(build_app(args), name="live", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)

        def searched() -> dict[str, float]:
            resp = httpx.post(f"{url}/search", json={"query": "a shape", "top_k": 20}, timeout=30)
            assert resp.status_code == 200, resp.text
            return {r["uri"]: r["score"] for r in resp.json()["results"]}

        odd = f"s3://{bucket_name}/clips/my clip+1.mp4"  # arrives URL-encoded
        keys = {"clips/my clip+1.mp4": clips[0], "clips/v1.mp4": clips[1]}
        for key, path in keys.items():
            s3.upload_file(str(path), bucket_name, key)
        s3.put_object(Bucket=bucket_name, Key="clips/broken.mp4", Body=os.urandom(3000))
        s3.upload_file(str(clips[2]), bucket_name, "elsewhere/x.mp4")  # not watched
        expected = {f"s3://{bucket_name}/{k}" for k in keys}
        wait_for("uploads searchable", lambda: set(searched()) == expected)
        assert set(listed(tmp_path / "qdrant", capsys)) == expected
        failures = (tmp_path / "watch" / "failures.jsonl").read_text().splitlines()
        assert [json.loads(x)["uri"] for x in failures] == [f"s3://{bucket_name}/clips/broken.mp4"]

        # overwrite: the new etag (and vector) replaces the old point, still one point
        before = listed(tmp_path / "qdrant", capsys)[odd]
        s3.upload_file(str(clips[3]), bucket_name, "clips/my clip+1.mp4")
        new_etag = s3.head_object(Bucket=bucket_name, Key="clips/my clip+1.mp4")["ETag"]
        assert new_etag.strip('"') != before
        wait_for(
            "overwrite visible",
            lambda: listed(tmp_path / "qdrant", capsys).get(odd) == new_etag.strip('"'),
        )
        assert set(searched()) == expected

        # delete: gone from search and from ls
        s3.delete_object(Bucket=bucket_name, Key="clips/v1.mp4")
        wait_for("delete visible", lambda: set(searched()) == {odd})
        assert set(listed(tmp_path / "qdrant", capsys)) == {odd}
    finally:
        watcher.stop()
        thread.join(timeout=60)
        watcher.close()
        serve.shutdown()
    summary = json.loads((tmp_path / "watch" / "summary.json").read_text())
    assert summary["finished"] and summary["deleted"] == 1 and summary["failed"] == 1
    assert summary["indexed"] == 3 and summary["lag_s"] >= 0


def test_killed_watcher_restarts_exactly_once_with_a_bounded_burst(
    ray_cluster: Any,
    s3_endpoint: str,
    make_bucket: Any,
    bucket_name: str,
    clips: list[Path],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3, queue_url = notifying_bucket(make_bucket, s3_endpoint, bucket_name, visibility_s=5)
    first = clips[:6]
    for i, path in enumerate(first):
        s3.upload_file(str(path), bucket_name, f"clips/a{i}.mp4")
    address = ray_cluster.get_runtime_context().gcs_address
    args = [
        sys.executable, "-m", "pipelines.watch", f"s3://{bucket_name}/clips/",
        "--queue-url", queue_url, "--sqs-endpoint-url", s3_endpoint,
        "--s3-endpoint-url", s3_endpoint, "--checkpoint", str(checkpoint),
        "--qdrant-path", str(tmp_path / "qdrant"), "--collection", "videos",
        "--output", str(tmp_path / "watch"), "--frame-size", "64", "--decode-cpus", "0.25",
        "--model-cpus", "0.25", "--batch-size", "2", "--batch-wait-s", "0.5",
        "--visibility-timeout-s", "5", "--ray-address", address,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline, done, log = time.monotonic() + WAIT_S, 0, []
    for line in proc.stdout:
        log.append(line)
        done += line.startswith("micro-batch done")
        if done >= 1 and line.startswith("micro-batch: "):  # in the middle of the second
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "the watcher never finished a micro-batch"
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(log[-20:])
    held = listed(tmp_path / "qdrant", capsys)  # the store actor outlived its creator
    assert 1 <= len(held) < len(first)

    # while it is down: a delete, and a burst larger than the next watcher's in-flight bound
    s3.delete_object(Bucket=bucket_name, Key="clips/a0.mp4")
    burst = [f"clips/b{i}.mp4" for i in range(6)]
    for key, path in zip(burst, clips[2:], strict=False):
        s3.upload_file(str(path), bucket_name, key)
    s3.upload_file(str(clips[0]), bucket_name, "clips/b5.mp4")
    live = {f"s3://{bucket_name}/clips/a{i}.mp4" for i in range(1, 6)}
    live |= {f"s3://{bucket_name}/{k}" for k in burst}

    settings = watch_settings(
        f"s3://{bucket_name}/clips/",
        tmp_path,
        checkpoint,
        queue_url=queue_url,
        s3_endpoint_url=s3_endpoint,
        sqs_endpoint_url=s3_endpoint,
        visibility_timeout_s=5,
        max_in_flight=3,
        once=True,  # until the queue is empty, the killed watcher's messages included
    )
    watcher = Watcher(settings)
    try:
        summary = watcher.run()
    finally:
        watcher.close()
    assert summary["peak_in_flight"] <= 3
    indexed = listed(tmp_path / "qdrant", capsys)
    assert set(indexed) == live  # nothing lost, the deleted one gone, each once (point ids)
    etags = {
        f"s3://{bucket_name}/{o['Key']}": o["ETag"].strip('"')
        for o in s3.list_objects_v2(Bucket=bucket_name, Prefix="clips/")["Contents"]
    }
    assert indexed == etags
    attrs = sqs_client(s3_endpoint).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) == 0
    assert int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0


def test_poll_a_folder_and_a_bucket_without_notifications(
    ray_cluster: Any,
    s3_endpoint: str,
    make_bucket: Any,
    bucket_name: str,
    clips: list[Path],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for path in clips[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.mp4").write_bytes(os.urandom(3000))
    s3 = make_bucket(s3_endpoint, bucket_name)  # no notification configuration
    for path in clips[3:5]:
        s3.upload_file(str(path), bucket_name, f"clips/{path.name}")

    prefix = str(folder.resolve()) + "/"
    watcher = Watcher(watch_settings(str(folder), tmp_path, checkpoint, once=True))
    try:
        first = watcher.poll_once(prefix)
        assert (first["indexed"], first["failed"]) == (3, 1)
        again = watcher.poll_once(prefix)  # unchanged, and the broken one not fetched again
        assert (again.get("indexed", 0), again.get("failed", 0), again["deleted"]) == (0, 0, 0)
        (folder / clips[0].name).unlink()
        shutil.copy(clips[5], folder / "new.mp4")
        third = watcher.poll_once(prefix)
        assert (third["indexed"], third["deleted"]) == (1, 1)
    finally:
        watcher.close()
    on_disk = {str((folder / p.name).resolve()) for p in clips[1:3]} | {
        str((folder / "new.mp4").resolve())
    }
    assert set(listed(tmp_path / "qdrant", capsys)) == on_disk

    bucket = watch_settings(
        f"s3://{bucket_name}/clips/",
        tmp_path,
        checkpoint,
        s3_endpoint_url=s3_endpoint,
        collection="bucket",
        output=str(tmp_path / "watch-bucket"),
        once=True,
    )
    watcher = Watcher(bucket)
    try:
        assert watcher.poll_once(f"s3://{bucket_name}/clips/")["indexed"] == 2
        s3.delete_object(Bucket=bucket_name, Key=f"clips/{clips[3].name}")
        assert watcher.poll_once(f"s3://{bucket_name}/clips/")["deleted"] == 1
    finally:
        watcher.close()
