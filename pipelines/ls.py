"""``adaclip ls``: what an index holds, one line per video, and the count.

Reads the collection through the same store interface as the job and the server, so it
works on the embedded folder (when no job holds it) and on a Qdrant server alike.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from pipelines.settings import StoreSettings, parse_settings
from pipelines.store import DEFAULT_QDRANT_PATH, open_store
from pipelines.store.base import LISTED_FIELDS


class LsSettings(StoreSettings):
    """``adaclip ls --collection NAME``: list the videos of an index."""

    collection: str = Field(description="Qdrant collection to list")  # type: ignore[assignment]
    uri_prefix: str | None = Field(None, description="list only videos whose URI starts with it")
    json_lines: bool = Field(
        False, description="one JSON object per video on stdout (the count goes to stderr)"
    )
    # ``--json`` too; the field cannot be called ``json`` (BaseModel.json).
    model_config = SettingsConfigDict(cli_shortcuts={"json-lines": "json"})


def format_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Aligned text columns: uri, etag, duration, model_id, indexed_at."""
    header = {"uri": "URI", "etag": "ETAG", "duration_s": "DURATION_S"}
    header |= {"model_id": "MODEL_ID", "indexed_at": "INDEXED_AT"}
    cells = [header] + [
        {
            "uri": str(r["uri"]),
            "etag": str(r.get("etag") or ""),
            "duration_s": f"{float(r.get('duration_s') or 0.0):.2f}",
            "model_id": str(r.get("model_id") or ""),
            "indexed_at": str(r.get("indexed_at") or ""),
        }
        for r in rows
    ]
    widths = {k: max(len(c[k]) for c in cells) for k in header}
    return ["  ".join(c[k].ljust(widths[k]) for k in header).rstrip() for c in cells]


def write_listing(
    rows: Iterable[dict[str, Any]], collection: str, as_json: bool, out: TextIO, err: TextIO
) -> int:
    """Print the videos (sorted by URI) and the count; returns the count."""
    ordered = sorted(rows, key=lambda r: str(r["uri"]))
    if as_json:
        for row in ordered:
            out.write(json.dumps({k: row.get(k) for k in LISTED_FIELDS}) + "\n")
        err.write(f"{len(ordered)} videos in {collection}\n")
    else:
        if ordered:
            out.write("\n".join(format_table(ordered)) + "\n")
        out.write(f"{len(ordered)} videos in {collection}\n")
    return len(ordered)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip ls`` and ``python -m pipelines.ls``."""
    settings = parse_settings(LsSettings, argv, "adaclip ls")
    store = open_store(
        qdrant_path=settings.qdrant_path or DEFAULT_QDRANT_PATH,
        qdrant_url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
    )
    try:
        store.open_collection(settings.collection)
        rows = list(store.iter_videos(settings.uri_prefix))
    except LookupError as exc:
        print(f"adaclip ls: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    write_listing(rows, settings.collection, settings.json_lines, sys.stdout, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
