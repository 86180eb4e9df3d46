"""Model rollout: `adaclip publish` (immutable `<model_id>/` checkpoint prefixes) and
`adaclip alias` (point a logical collection name at a physical per-model collection).

A new model goes live without downtime and without ever mixing embedding spaces:

    adaclip publish ./jobs/train/best s3://models/adaclip/        # -> s3://.../<model_id>/
    adaclip index s3://videos/ --checkpoint s3://models/adaclip/<model_id>   # its collection
    adaclip alias videos adaclip_<model_id> --qdrant-url ...      # atomic switch

A server started with `--collection videos --models-root s3://models/adaclip/` follows the
alias: it loads the new collection's model from `<models_root>/<model_id>/` while the old
collection keeps answering, then answers from the new pair only.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field
from pydantic_settings import CliPositionalArg

from pipelines.settings import JobSettings, default_collection, parse_settings

CHECKPOINT_FILES = ("model.safetensors", "config.json")  # config last: a reader needs both


class PublishError(RuntimeError):
    """The checkpoint cannot be published (message for the user)."""


class PublishSettings(JobSettings):
    """`adaclip publish CHECKPOINT DEST`: copy a checkpoint to `DEST/<model_id>/`, never
    overwriting a published model."""

    checkpoint: CliPositionalArg[str] = Field(description="checkpoint folder (local or s3://)")
    dest: CliPositionalArg[str] = Field(description="models root: a folder or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint")


class AliasSettings(JobSettings):
    """`adaclip alias NAME COLLECTION`: point the logical collection NAME at COLLECTION
    (atomically; readers see the old or the new target, never a mix)."""

    name: CliPositionalArg[str] = Field(description="logical collection name (the alias)")
    target: CliPositionalArg[str] = Field(description="physical collection it points at")
    qdrant_path: str | None = Field(None, description="embedded Qdrant folder")
    qdrant_url: str | None = Field(None, description="Qdrant server URL (wins over --qdrant-path)")
    qdrant_api_key: str | None = Field(None, description="Qdrant server API key")


def publish_checkpoint(checkpoint: str, dest: str, s3_endpoint_url: str | None = None) -> str:
    """Copy `checkpoint` to `dest/<model_id>/` and return that URI.

    The prefix is named by the hash of the files, so it is immutable: publishing the same
    model again is a no-op, and files of another model are never written under it.

    Raises:
        PublishError: `dest/<model_id>/` holds files of another model.
    """
    from adaclip.checkpoint import model_id_of
    from pipelines.checkpoints import fetch_checkpoint
    from pipelines.object_fetch import is_s3_uri

    local = fetch_checkpoint(checkpoint, s3_endpoint_url)
    model_id = model_id_of(local)
    target = f"{dest.rstrip('/')}/{model_id}"
    if is_s3_uri(dest):
        _publish_s3(local, target, model_id, s3_endpoint_url)
    else:
        _publish_local(local, Path(target), model_id)
    return target


def _existing_model(target: str, s3_endpoint_url: str | None) -> str | None:
    """model_id of what `target` holds already (None: nothing there)."""
    from adaclip.checkpoint import model_id_of
    from pipelines.checkpoints import fetch_checkpoint
    from pipelines.sources import SourceError

    try:
        return model_id_of(fetch_checkpoint(target, s3_endpoint_url))
    except (SourceError, FileNotFoundError):
        return None


def _refuse_other(target: str, model_id: str, existing: str | None) -> bool:
    """True when `target` already holds this model; raises when it holds another."""
    if existing is None:
        return False
    if existing != model_id:
        raise PublishError(
            f"{target} holds model {existing}, not {model_id}: published prefixes are "
            f"immutable, remove it by hand if it is really garbage"
        )
    return True


def _publish_local(local: Path, target: Path, model_id: str) -> None:
    if _refuse_other(str(target), model_id, _existing_model(str(target), None)):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.partial-", dir=target.parent))
    try:
        for name in CHECKPOINT_FILES:
            shutil.copy2(local / name, tmp / name)
        tmp.rename(target)  # atomic: readers see nothing or the whole checkpoint
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_s3(local: Path, target: str, model_id: str, s3_endpoint_url: str | None) -> None:
    from pipelines.object_fetch import s3_client

    if _refuse_other(target, model_id, _existing_model(target, s3_endpoint_url)):
        return
    bucket, _, prefix = target[len("s3://") :].partition("/")
    client = s3_client(s3_endpoint_url)
    for name in CHECKPOINT_FILES:
        client.upload_file(str(local / name), bucket, f"{prefix}/{name}")


def publish_main(argv: Sequence[str] | None = None) -> int:
    """`adaclip publish CHECKPOINT DEST`: print the published URI and its collection."""
    settings = parse_settings(PublishSettings, argv, "adaclip publish")
    try:
        uri = publish_checkpoint(settings.checkpoint, settings.dest, settings.s3_endpoint_url)
    except PublishError as err:
        print(f"adaclip publish: {err}", file=sys.stderr)
        return 1
    model_id = uri.rstrip("/").rsplit("/", 1)[-1]
    print(f"published {uri}  (model {model_id}, collection {default_collection(model_id)})")
    return 0


def alias_main(argv: Sequence[str] | None = None) -> int:
    """`adaclip alias NAME COLLECTION`: switch the alias, print the old and new target."""
    from pipelines.store import open_store

    settings = parse_settings(AliasSettings, argv, "adaclip alias")
    store = open_store(
        qdrant_path=settings.qdrant_path,
        qdrant_url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
    )
    try:
        previous = store.set_alias(settings.name, settings.target)
    except (LookupError, ValueError) as err:
        print(f"adaclip alias: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{settings.name} -> {settings.target} (was {previous or 'no alias'})")
    return 0
