"""A run folder on ``s3://`` storage (a moto server on 127.0.0.1): the experiment record is
written there, a resubmission with another configuration is refused and ``--no-resume`` on
an existing run is refused, as for a local folder; Ray Train gets the same filesystem."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from train.loop import LoopConfig
from train.run import check_resume_config, experiment_config, run_config, storage_filesystem
from train.settings import TrainSettings

BUCKET = "train-runs"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from pipelines.sources import s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _settings(endpoint: str, **kw: object) -> TrainSettings:
    return TrainSettings(
        storage_path=f"s3://{BUCKET}/runs", s3_endpoint_url=endpoint, name="exp", **kw
    )


def _experiment(settings: TrainSettings) -> dict[str, object]:
    loop = LoopConfig(model_config={"top_k": 4}, num_epochs=2, global_batch_size=8,
                      num_train_videos=0, lr=settings.lr)  # fmt: skip
    return experiment_config(loop, settings)


def test_changed_config_is_refused_on_s3_storage(s3_endpoint: str) -> None:
    from pipelines.sources import s3_client

    s3 = s3_client(s3_endpoint)
    settings = _settings(s3_endpoint)
    check_resume_config(settings, _experiment(settings))  # a new run: recorded
    body = s3.get_object(Bucket=BUCKET, Key="runs/exp/adaclip_run.json")["Body"].read()
    assert json.loads(body) == _experiment(settings)

    # Ray Train has written its snapshot: the folder now holds a run to resume
    s3.put_object(Bucket=BUCKET, Key="runs/exp/checkpoint_manager_snapshot.json", Body=b"{}")
    check_resume_config(settings, _experiment(settings))  # the same experiment: resumes
    other = _settings(s3_endpoint, lr=0.5)
    with pytest.raises(ValueError, match=r"another configuration \(changed: lr\)"):
        check_resume_config(other, _experiment(other))


def test_ray_train_gets_the_same_filesystem(s3_endpoint: str) -> None:
    settings = _settings(s3_endpoint)
    fs, path = storage_filesystem(settings)
    assert path == f"{BUCKET}/runs" and fs.type_name == "s3"
    config = run_config(settings)
    assert config.storage_path == f"{BUCKET}/runs"
    assert config.storage_filesystem.type_name == "s3"
