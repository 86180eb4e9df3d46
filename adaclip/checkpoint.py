"""Checkpoint folders: ``config.json`` + ``model.safetensors``.

The ``model_id`` is a hash of both files, so two folders with the same config and weights
share an id and any change of either gives a new one. Remote folders (``s3://``) are
fetched by the data plane (``pipelines``) into a local folder before ``load_checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaclip.config import AdaClipConfig

if TYPE_CHECKING:  # torch is imported only to build a model: reading a config needs none
    from adaclip.model import AdaCLIP

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or of an unknown format."""


def save_checkpoint(model: AdaCLIP, out_dir: str | os.PathLike[str], **extra: Any) -> str:
    """Write ``model`` as a checkpoint folder; return its ``model_id``.

    Files are written to temporary names and renamed, so a crash never leaves a folder
    whose config and weights disagree.

    Args:
        model: the model to save.
        out_dir: destination folder (created).
        **extra: metadata stored under ``"extra"`` in config.json (e.g. training epoch).
    """
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    doc = {"format_version": FORMAT_VERSION, "config": config, "extra": extra}
    weights_tmp = _temp_path(out, WEIGHTS_FILE)
    save_model(model, str(weights_tmp))
    config_tmp = _temp_path(out, CONFIG_FILE)
    config_tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(weights_tmp, out / WEIGHTS_FILE)
    os.replace(config_tmp, out / CONFIG_FILE)
    return model_id_of(out)


def _temp_path(folder: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    os.close(fd)
    return Path(path)


def read_checkpoint_config(folder: str | os.PathLike[str]) -> tuple[AdaClipConfig, dict[str, Any]]:
    """Read and validate ``config.json``; return the model config and the ``extra`` dict."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: {CONFIG_FILE} is missing")
    if not (Path(folder) / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder} is incomplete: {WEIGHTS_FILE} is missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} has checkpoint format version {version!r}; this adaclip reads version "
            f"{FORMAT_VERSION}. Re-export it with a matching adaclip release."
        )
    return AdaClipConfig.from_dict(doc["config"]), dict(doc.get("extra", {}))


def load_checkpoint(folder: str | os.PathLike[str], device: str = "cpu") -> AdaCLIP:
    """Rebuild the model from a local checkpoint folder (no hub access)."""
    from safetensors.torch import load_model

    from adaclip.model import AdaCLIP

    config, _ = read_checkpoint_config(folder)
    model = AdaCLIP(config, load_pretrained=False)
    missing, unexpected = load_model(model, str(Path(folder) / WEIGHTS_FILE), strict=False)
    check_loaded_keys(folder, missing, unexpected, "weights")
    model.model_id = model_id_of(folder)
    return model.to(device).eval()


def check_loaded_keys(
    folder: str | os.PathLike[str], missing: Iterable[str], unexpected: Iterable[str], what: str
) -> None:
    """Refuse weights read from ``folder`` whose keys do not match the model's config.

    Raises:
        CheckpointError: ``missing`` or ``unexpected`` keys.
    """
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: {what} do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def model_id_of(folder: str | os.PathLike[str]) -> str:
    """Hash of config.json and model.safetensors (16 hex digits)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
