"""Request and response bodies of the search API (they are also its OpenAPI schema).

Requests are strict: unknown fields, a query that is not a string, a `top_k` that is not
an integer (`"5"`, `5.0`, `true`) are refused with a 4xx, never coerced.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_QUERY_CHARS = 1000
MAX_TOP_K = 100
MAX_PREFIX_CHARS = 2048
MAX_IMAGE_B64_CHARS = 16 * 1024 * 1024  # the body limit (--max-body-bytes) applies first


class SearchFilter(BaseModel):
    """Restrictions on which videos may match."""

    model_config = ConfigDict(extra="forbid", strict=True)

    uri_prefix: str | None = Field(
        None, max_length=MAX_PREFIX_CHARS, description="only videos whose URI starts with this"
    )


class SearchRequest(BaseModel):
    """`POST /search`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"query": "a red circle moving left", "top_k": 5}]},
    )

    query: str | None = Field(
        None, min_length=1, max_length=MAX_QUERY_CHARS, description="text describing the video"
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IMAGE_B64_CHARS,
        description="instead of `query`: a base64 image (JPEG, PNG ...); videos are found "
        "by its CLIP embedding",
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="number of results")
    filter: SearchFilter | None = Field(None, description="restrict the candidate videos")
    rerank: bool | None = Field(
        None,
        description="re-order the best candidates by Q-Score (and find each one's moment); "
        "default: only when the model's aggregator is query-dependent (Q-Score), since "
        "re-ordering an MLP-Score model ranks by a similarity it was not trained on",
    )
    moments: bool = Field(
        False,
        description="find each hit's best moment (its kept frame closest to the query) "
        "without changing the order or the scores",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.image is None):
            raise ValueError("give exactly one of query (text) and image (base64)")
        return self

    @field_validator("image")
    @classmethod
    def _image_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError("image must be base64") from err
        return value

    def image_bytes(self) -> bytes:
        return base64.b64decode(self.image or "")

    @field_validator("query")
    @classmethod
    def _query_text(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("query must contain non-whitespace text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError("query must be valid Unicode text (no lone surrogates)") from err
        return value


class SearchResult(BaseModel):
    """One matching video."""

    video_id: str
    uri: str
    score: float = Field(description="cosine similarity, or the Q-Score when re-ranked")
    frame_ts: list[float] = Field(description="times (s) of the video's indexed frames")
    best_moment_s: float | None = Field(
        None, description="time (s) of the frame closest to the query (moments or re-rank)"
    )
    duration_s: float | None = None
    media_url: str | None = Field(
        None, description="where a browser can play the video (null: not reachable)"
    )
    frame_urls: list[str] = Field(
        default_factory=list,
        description="JPEG thumbnails of the kept frames, one per `frame_ts` (empty: the "
        "server cannot read the video)",
    )


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float
    model_id: str = Field(description="the model of the query embedding and of the collection")
    collection: str | None = Field(None, description="the physical collection answered from")
    reranked: bool = Field(False, description="whether hits were re-ordered by Q-Score")


class VideoInfo(BaseModel):
    """`GET /videos/{video_id}`: a video's stored record."""

    video_id: str
    uri: str
    etag: str | None = None
    size_bytes: int | None = None
    duration_s: float | None = None
    frame_ts: list[float]
    frame_weights: list[float] = Field(default_factory=list)
    model_id: str | None = None
    indexed_at: str | None = None
    media_url: str | None = None


class SimilarResponse(BaseModel):
    """`GET /videos/{video_id}/similar`: videos near an indexed video (never itself)."""

    video_id: str
    results: list[SearchResult]
    took_ms: float
    model_id: str
    collection: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body."""

    error: str = Field(description="what went wrong, for a person")
    detail: list[dict[str, object]] | None = Field(
        None, description="field errors of a refused request"
    )
