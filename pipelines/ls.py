"""``adaclip ls``: what an index holds, one line per video, and the count.

Reads the collection through the same store interface as the job and the server, so it
works on the embedded folder (when no job holds it) and on a Qdrant server alike. Rows are
streamed page by page in the index's order (point ids, not URIs): a collection of millions
is listed without being held in memory. Pipe through ``sort`` for URI order.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from pipelines.settings import StoreSettings, parse_settings
from pipelines.store import DEFAULT_QDRANT_PATH
from pipelines.store.actor import open_store_or_owner
from pipelines.store.base import LISTED_FIELDS, SCROLL_PAGE


class LsSettings(StoreSettings):
    """``adaclip ls --collection NAME``: list the videos of an index."""

    collection: str = Field(description="Qdrant collection to list")  # type: ignore[assignment]
    uri_prefix: str | None = Field(None, description="list only videos whose URI starts with it")
    ray_address: str | None = Field(
        None,
        description="Ray cluster whose store actor owns the folder, when a job or the server "
        "holds it (default: RAY_ADDRESS)",
    )
    json_lines: bool = Field(
        False, description="one JSON object per video on stdout (the count goes to stderr)"
    )
    # ``--json`` too; the field cannot be called ``json`` (BaseModel.json).
    model_config = SettingsConfigDict(cli_shortcuts={"json-lines": "json"})


HEADER = {
    "uri": "URI",
    "etag": "ETAG",
    "duration_s": "DURATION_S",
    "model_id": "MODEL_ID",
    "indexed_at": "INDEXED_AT",
}


def _cells(row: dict[str, Any]) -> dict[str, str]:
    return {
        "uri": str(row["uri"]),
        "etag": str(row.get("etag") or ""),
        "duration_s": f"{float(row.get('duration_s') or 0.0):.2f}",
        "model_id": str(row.get("model_id") or ""),
        "indexed_at": str(row.get("indexed_at") or ""),
    }


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> list[str]:
    """Aligned text columns (uri, etag, duration, model_id, indexed_at) of one page of rows;
    the column widths are the page's (the header's, at least)."""
    cells = ([HEADER] if header else []) + [_cells(r) for r in rows]
    widths = {k: max(len(HEADER[k]), *(len(c[k]) for c in cells)) for k in HEADER}
    return ["  ".join(c[k].ljust(widths[k]) for k in HEADER).rstrip() for c in cells]


def _pages(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while page := list(itertools.islice(it, size)):
        yield page


def write_listing(
    rows: Iterable[dict[str, Any]],
    collection: str,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    page_size: int = SCROLL_PAGE,
) -> int:
    """Print the videos as they stream in (a page at a time) and the count; returns it."""
    count = 0
    for page in _pages(rows, page_size):
        if as_json:
            out.write(
                "".join(json.dumps({k: r.get(k) for k in LISTED_FIELDS}) + "\n" for r in page)
            )
        else:
            out.write("\n".join(format_table(page, header=count == 0)) + "\n")
        out.flush()
        count += len(page)
    if as_json:
        err.write(f"{count} videos in {collection}\n")
    else:
        out.write(f"{count} videos in {collection}\n")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip ls`` and ``python -m pipelines.ls``."""
    settings = parse_settings(LsSettings, argv, "adaclip ls")
    try:  # the folder itself, or its store actor when a job or the server holds it
        store = open_store_or_owner(
            settings.qdrant_path or DEFAULT_QDRANT_PATH,
            settings.qdrant_url,
            settings.qdrant_api_key,
            settings.collection,
            settings.ray_address,
        )
    except (LookupError, RuntimeError) as exc:
        print(f"adaclip ls: {exc}", file=sys.stderr)
        return 1
    try:
        rows = store.iter_videos(settings.uri_prefix)
        write_listing(rows, settings.collection, settings.json_lines, sys.stdout, sys.stderr)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
