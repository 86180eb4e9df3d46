"""Settings of ``adaclip train`` and ``adaclip eval``: flags > ``ADACLIP_*`` > ``--config`` file.

A ``--config`` JSON file (``train/configs/*.json``) sets defaults: its keys are field names
(snake or kebab case); keys starting with ``_`` are comments. Environment variables
override the file and command-line flags override both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliPositionalArg, PydanticBaseSettingsSource

from pipelines.settings import JobSettings, parse_settings

DatasetKind = Literal["msrvtt", "didemo", "activitynet", "synthetic"]
CONFIGS_DIR = Path(__file__).parent / "configs"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Load a ``--config`` JSON file: comment keys (``_...``) dropped, kebab case accepted."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds one JSON object")
    return {k.replace("-", "_"): v for k, v in data.items() if not k.startswith("_")}


class ConfigFileSource(PydanticBaseSettingsSource):
    """Settings source that reads the ``--config`` file chosen for this parse."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._data = read_config_file(path) if path else {}
        if path:
            self._data.setdefault("config", str(path))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class DataSettings(JobSettings):
    """Where the annotations and videos of a dataset are, and how frames are decoded."""

    _config_file: ClassVar[str | None] = None

    config: str | None = Field(
        None, description="JSON file of defaults (train/configs/{msrvtt,didemo,...}.json)"
    )
    dataset: DatasetKind = Field(
        "synthetic",
        description="annotation flavour: msrvtt (captions), didemo/activitynet "
        "(paragraphs), synthetic (adaclip synth output)",
    )
    videos_root: str | None = Field(
        None, description="folder or s3://bucket/prefix holding <video_id>.<extension>"
    )
    frames_dir: bool = Field(
        False,
        description="--videos-root holds pre-extracted frames in the paper's layout "
        "(<root>/<video_id>/image_00001.jpg ...) instead of video files",
    )
    frames_fps: float | None = Field(
        None, description="frame rate the frames were extracted at (for timestamps)"
    )
    annotations: str | None = Field(
        None, description="folder of <split>.json annotation files (default: --videos-root)"
    )
    train_split: str = Field("train", description="annotation file (no .json) for training")
    val_split: str = Field("val", description="annotation file for model selection")
    test_split: str = Field("test", description="annotation file for --do-inference")
    frame_size: int = Field(224, description="decoded candidate frame size (square, pixels)")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto...); credentials: boto3 chain"
    )
    ray_address: str | None = Field(None, description="Ray cluster address (default: local/auto)")
    decode_cpus: float = Field(0.25, description="CPUs per Ray Data decode actor")
    decode_batch_size: int = Field(4, description="videos per decode batch")
    decode_concurrency: int = Field(2, description="max decode actors (the pool grows from 1)")
    output: str = Field(
        "./.adaclip/jobs/train", description="folder for reports, failures and the best model"
    )
    progress_bars: bool = Field(False, description="Ray Data progress bars")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_source = ConfigFileSource(settings_cls, cls._config_file)
        return init_settings, env_settings, config_source, dotenv_settings, file_secret_settings

    @property
    def annotations_dir(self) -> str:
        root = self.annotations or self.videos_root
        if root is None:
            raise ValueError("set --annotations or --videos-root")
        return root


class TrainSettings(DataSettings):
    """``adaclip train``: train AdaCLIP with Ray Train (DDP, elastic, fault tolerant)."""

    # model
    arch: str = Field("tiny", description="'tiny' or an open_clip architecture (ViT-B-32)")
    clip_weights: str | None = Field(
        None, description="CLIP weights: a local file or an open_clip pretrained tag"
    )
    quick_gelu: bool | None = Field(
        None,
        description="QuickGELU activation (OpenAI's weights); default: follow the weights "
        "(the tag's open_clip config, a -quickgelu arch, an OpenAI TorchScript file)",
    )
    policy_weights: str | None = Field(None, description="MobileNetV3-Large state dict file")
    init_checkpoint: str | None = Field(
        None, description="start from the weights (and config) of this checkpoint folder"
    )
    num_candidates: int = Field(16, description="N candidate frames per video")
    top_k: int = Field(12, description="K frames kept per video")
    frame_agg: Literal["mean", "mlp", "transformer", "qscore"] = Field(
        "mlp", description="frame aggregation"
    )
    frame_selection: Literal["policy", "uniform", "all"] = Field(
        "policy",
        description="how frames are kept: policy (AdaCLIP: K of N by the learned policy), "
        "uniform (K of N evenly spaced), all (all N frames, --top-k ignored; with "
        "--frame-agg mean: the paper's baseline)",
    )
    freeze_cnn: bool = Field(True, description="freeze the policy's MobileNetV3 backbone")
    policy_resolution: int | None = Field(None, description="policy input size (default 224)")
    max_text_len: int = Field(32, description="caption tokens (32 MSR-VTT, 64 paragraphs)")
    # optimisation
    num_epochs: int = Field(30, description="training epochs")
    batch_size: int = Field(192, description="GLOBAL batch size (split over workers)")
    lr: float = Field(1e-4, description="learning rate of the new modules (policy, aggregation)")
    clip_lr: float = Field(1e-7, description="learning rate of the CLIP towers")
    weight_decay: float = Field(0.2, description="AdamW weight decay (matrices only)")
    warmup_ratio: float = Field(0.1, description="fraction of steps of linear warm-up")
    grad_clip: float = Field(1.0, description="gradient norm clipping")
    seed: int = Field(0, description="random seed")
    amp: bool = Field(True, description="mixed precision on GPU (ignored on CPU)")
    # cluster
    num_workers: str = Field("1", description="training workers: N, or MIN,MAX for elastic")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL and AMP")
    cpus_per_worker: float = Field(1.0, description="CPUs per training worker")
    storage_path: str = Field(
        "./.adaclip/ray_results", description="Ray Train storage (local or s3://)"
    )
    name: str | None = Field(None, description="run name (default adaclip-<dataset>)")
    resume: bool = Field(
        True, description="continue the run found under --storage-path/--name (else refuse)"
    )
    max_failures: int = Field(3, description="worker-group restarts before the run fails")
    keep_checkpoints: int | None = Field(
        3,
        description="checkpoints kept: the best by validation R@1 (plus the latest, for "
        "resuming); 0 or none keeps all",
    )
    frame_store: str | None = Field(
        "auto",
        description="persistent store of decoded candidate frames (folder or s3://), shared "
        "by runs and machines; 'auto': <output>/frame_store; 'none': decode every run into "
        "Ray's object store only",
    )
    max_worker_batch: int | None = Field(
        None,
        description="bound on videos per worker and step; when the world size shrinks "
        "below batch-size/bound, the global batch shrinks and the learning rates scale by "
        "sqrt(global/batch-size)",
    )
    # evaluation
    do_inference: bool = Field(
        False, description="evaluate --checkpoint (default: this run's best) on --eval-split"
    )
    checkpoint: str | None = Field(None, description="checkpoint folder for --do-inference")
    eval_split: str | None = Field(None, description="split for --do-inference (default test)")
    eval_batch_size: int = Field(32, description="videos per evaluation batch")
    inject_failure_at_epoch: int | None = Field(
        None, description="testing: rank 0 raises once at this epoch (fault-tolerance drill)"
    )

    @field_validator("num_workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        parse_num_workers(value)
        return value

    @property
    def run_name(self) -> str:
        return self.name or f"adaclip-{self.dataset}"

    @property
    def workers(self) -> int | tuple[int, int]:
        return parse_num_workers(self.num_workers)


class EvalSettings(DataSettings):
    """``adaclip eval CHECKPOINT``: retrieval metrics of a checkpoint on one split."""

    checkpoint: CliPositionalArg[str | None] = Field(
        None, description="checkpoint folder (local or s3://); none: --zero-shot"
    )
    split: str | None = Field(None, description="split to evaluate (default: --test-split)")
    eval_batch_size: int = Field(32, description="videos per evaluation batch")
    output: str = Field("./.adaclip/jobs/eval", description="folder for the JSON report")
    zero_shot: bool = Field(
        False,
        description="evaluate plain CLIP (--arch, --clip-weights) instead of a checkpoint: "
        "--num-candidates frames evenly spaced, mean pooling (the published zero-shot setting)",
    )
    arch: str = Field("ViT-B-32", description="CLIP architecture (with --zero-shot)")
    clip_weights: str | None = Field(
        None, description="CLIP weights, a local file or an open_clip tag (with --zero-shot)"
    )
    quick_gelu: bool | None = Field(
        None, description="QuickGELU activation (with --zero-shot; default: follow the weights)"
    )
    num_candidates: int = Field(12, description="frames per video (with --zero-shot)")
    max_text_len: int = Field(32, description="caption tokens (with --zero-shot)")

    @model_validator(mode="after")
    def _checkpoint_or_zero_shot(self) -> EvalSettings:
        if (self.checkpoint is None) == (not self.zero_shot):
            raise ValueError("give a CHECKPOINT folder or --zero-shot (not both)")
        return self


def parse_num_workers(value: str | int) -> int | tuple[int, int]:
    """``"2"`` -> 2, ``"1,4"`` -> (1, 4) (elastic)."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        nums = [int(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"num_workers must be N or MIN,MAX, got {value!r}") from err
    if len(nums) == 1 and nums[0] >= 1:
        return nums[0]
    if len(nums) == 2 and 1 <= nums[0] <= nums[1]:
        return nums[0], nums[1]
    raise ValueError(f"num_workers must be N >= 1 or MIN,MAX with 1 <= MIN <= MAX, got {value!r}")


D = TypeVar("D", bound=DataSettings)


def parse_with_config(cls: type[D], argv: Sequence[str] | None, prog: str) -> D:
    """Parse flags over ``ADACLIP_*`` over the ``--config`` file named in argv (or env)."""
    import os

    args = list(argv or [])
    path = os.environ.get("ADACLIP_CONFIG")
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    previous = cls._config_file
    cls._config_file = path
    try:
        return parse_settings(cls, args, prog)
    finally:
        cls._config_file = previous
