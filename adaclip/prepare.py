"""Split files in the paper's schema from each dataset's original annotation downloads.

``adaclip prepare msrvtt|didemo|activitynet`` turns the annotation files a user downloads
into the split files the loaders read (METHOD.md section 10)::

    {video_id: {"extension": str, "sentences": [str, ...],
                "timestamps": [[start, end], ...] (optional), "duration": float (optional)}}

following, key order and text included, the rules that produced ``shared/data/annots``:

- MSR-VTT (CLIP4Clip's ``msrvtt_data.zip``): ``MSRVTT_data.json`` (``"videos"`` with
  ``"video_id"``, ``"start time"``, ``"end time"``; ``"sentences"`` with ``"video_id"``,
  ``"caption"``), ``MSRVTT_train.9k.csv`` (column ``video_id``) and
  ``MSRVTT_JSFUSION_test.csv`` (columns ``key,vid_key,video_id,sentence``). ``train.json``
  holds every caption of the 9k training videos; ``val.json`` (the 1k-A test set) the one
  JSFusion sentence of each test video. Entries are ``{"extension", "timestamps":
  [[start time, end time]], "sentences"}`` in the order of ``"videos"``; captions are kept
  as they are.
- DiDeMo (LocalizingMoments ``{train,val,test}_data.json``: a list of moments
  ``{"video", "description", "times", ...}``): one entry per video, in order of first
  appearance, its descriptions in file order, each ending with a full stop (one is
  appended when missing, nothing is stripped). Entries are ``{"extension", "sentences"}``;
  ``timestamps=True`` adds ``"timestamps"`` from the 5-second segment indices (see
  :func:`didemo_moment_seconds`). Optional split lists (Collaborative Experts'
  ``{split}_list.txt``) restrict the videos.
- ActivityNet Captions (``train.json``, ``val_1.json``: ``{"v_xxx": {"duration",
  "timestamps", "sentences"}}``): ``{"extension", "sentences", "timestamps", "duration"}``
  with every value as it is in the download (sentences keep their leading spaces).

Every split is restricted to the videos present (a :class:`VideoCatalog` built from file
names: a folder listing, a text file of names or keys, an s3 listing done elsewhere);
the file found gives ``extension`` (``<video_id>.<extension>``, or ``""`` when the file
is named exactly like the id). Without a catalog every video is kept with the default
extension. A JSON report says what was dropped and why.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DATASETS",
    "DropReason",
    "SplitReport",
    "SplitResult",
    "VideoCatalog",
    "build_activitynet_split",
    "build_didemo_split",
    "build_msrvtt_test",
    "build_msrvtt_train",
    "didemo_moment_seconds",
    "dump_split",
    "prepare_activitynet",
    "prepare_didemo",
    "prepare_main",
    "prepare_msrvtt",
]

DATASETS = ("msrvtt", "didemo", "activitynet")
DIDEMO_SEGMENT_S = 5.0  # LocalizingMoments splits every video into 5-second segments


class DropReason:
    """Why a video (or one caption) is left out; the keys of ``SplitReport.dropped``."""

    MISSING_VIDEO = "missing_video"  # no file for it among the available videos
    NO_CAPTIONS = "no_captions"  # the split lists it but no caption belongs to it
    NOT_IN_SPLIT_LIST = "not_in_split_list"  # excluded by the optional split list
    MALFORMED = "malformed"  # an entry the format does not allow (e.g. timestamps/sentences)
    EMPTY_CAPTION = "empty_caption"  # one caption dropped (its video may stay)


@dataclass
class SplitReport:
    """What happened to one split."""

    dataset: str
    split: str
    sources: list[str] = field(default_factory=list)
    videos_in: int = 0  # distinct videos the split's sources name
    videos_kept: int = 0
    sentences_kept: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> video ids
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, video_id: str) -> None:
        self.dropped.setdefault(reason, []).append(video_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "sources": self.sources,
            "videos_in": self.videos_in,
            "videos_kept": self.videos_kept,
            "sentences_kept": self.sentences_kept,
            "dropped_counts": {k: len(v) for k, v in sorted(self.dropped.items())},
            "dropped": {k: v for k, v in sorted(self.dropped.items())},
            "notes": self.notes,
        }


@dataclass
class SplitResult:
    """A split file's content and its report."""

    annots: dict[str, dict[str, Any]]
    report: SplitReport


class VideoCatalog:
    """The videos that exist, by id, with the extension of the file found.

    Built from file names (``video7020.mp4``), paths or s3 keys/URIs (the last path part
    counts) or bare ids. A video ``X`` is found as ``X.<ext>`` (extension ``ext``; with
    several, ``preferred`` wins, then the alphabetically first) or as a file named exactly
    ``X`` (extension ``""``: DiDeMo's ids such as ``...d14bd317de.mov`` are file names).
    """

    def __init__(self, names: Iterable[str], preferred: str = "mp4") -> None:
        self.preferred = preferred.lstrip(".")
        self._exact: set[str] = set()
        self._by_stem: dict[str, set[str]] = {}
        for raw in names:
            name = raw.strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
            if not name:
                continue
            self._exact.add(name)
            stem, dot, ext = name.rpartition(".")
            if dot and stem:
                self._by_stem.setdefault(stem, set()).add(ext)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], preferred: str = "mp4") -> VideoCatalog:
        """The regular files directly inside ``folder`` (the paper keeps no sub-folders)."""
        root = Path(folder)
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a folder")
        return cls((p.name for p in root.iterdir() if p.is_file()), preferred)

    @classmethod
    def from_listing(cls, path: str | os.PathLike[str], preferred: str = "mp4") -> VideoCatalog:
        """A text file with one name, path, s3 key or URI a line (blank and # lines skipped)."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(
            (ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), preferred
        )

    def __len__(self) -> int:
        return len(self._exact)

    def extension(self, video_id: str) -> str | None:
        """The extension of ``video_id``'s file, ``""`` for an exact name, None when absent."""
        exts = self._by_stem.get(video_id)
        if exts:
            if self.preferred in exts:
                return self.preferred
            return sorted(exts)[0]
        if video_id in self._exact:
            return ""
        return None

    def unreferenced(self, video_ids: Iterable[str]) -> list[str]:
        """Names of the files no id in ``video_ids`` refers to."""
        used: set[str] = set()
        for vid in video_ids:
            used.add(vid)
            used.update(f"{vid}.{e}" for e in self._by_stem.get(vid, ()))
        return sorted(self._exact - used)


class _Resolver:
    """Extension lookup shared by the builders: a catalog, or everything with a default."""

    def __init__(self, catalog: VideoCatalog | None, default_extension: str) -> None:
        self.catalog = catalog
        self.default = default_extension.lstrip(".")

    def __call__(self, video_id: str) -> str | None:
        if self.catalog is None:
            return self.default
        return self.catalog.extension(video_id)


# ------------------------------------------------------------------------- MSR-VTT
def _msrvtt_timestamps(data: Mapping[str, Any]) -> dict[str, list[list[Any]]]:
    return {
        str(v["video_id"]): [[v["start time"], v["end time"]]]
        for v in data.get("videos", [])
        if "start time" in v and "end time" in v
    }


def _msrvtt_video_order(data: Mapping[str, Any], wanted: Sequence[str]) -> list[str]:
    """``wanted`` in the order of ``data["videos"]``, ids unknown to it after, as listed."""
    order = [str(v["video_id"]) for v in data.get("videos", [])]
    wanted_set = set(wanted)
    known = [vid for vid in dict.fromkeys(order) if vid in wanted_set]
    rest = [vid for vid in dict.fromkeys(wanted) if vid not in set(known)]
    return known + rest


def build_msrvtt_train(
    data: Mapping[str, Any],
    video_ids: Sequence[str],
    catalog: VideoCatalog | None = None,
    *,
    default_extension: str = "mp4",
    split: str = "train",
) -> SplitResult:
    """Every caption of the listed videos (e.g. ``MSRVTT_train.9k.csv``) from ``MSRVTT_data.json``.

    Args:
        data: the parsed ``MSRVTT_data.json``.
        video_ids: the split's videos.
        catalog: the videos present; None keeps all with ``default_extension``.
    """
    report = SplitReport("msrvtt", split)
    resolve = _Resolver(catalog, default_extension)
    timestamps = _msrvtt_timestamps(data)
    captions: dict[str, list[str]] = {}
    for sent in data.get("sentences", []):
        captions.setdefault(str(sent["video_id"]), []).append(sent["caption"])
    annots: dict[str, dict[str, Any]] = {}
    ordered = _msrvtt_video_order(data, video_ids)
    report.videos_in = len(ordered)
    for vid in ordered:
        ext = resolve(vid)
        sentences = [c for c in captions.get(vid, []) if isinstance(c, str) and c.strip()]
        for _ in range(len(captions.get(vid, [])) - len(sentences)):
            report.drop(DropReason.EMPTY_CAPTION, vid)
        if ext is None:
            report.drop(DropReason.MISSING_VIDEO, vid)
        elif not sentences:
            report.drop(DropReason.NO_CAPTIONS, vid)
        else:
            annots[vid] = _msrvtt_entry(ext, timestamps.get(vid), sentences)
    return _finish(annots, report)


def build_msrvtt_test(
    data: Mapping[str, Any] | None,
    rows: Iterable[Mapping[str, str]],
    catalog: VideoCatalog | None = None,
    *,
    default_extension: str = "mp4",
    split: str = "val",
) -> SplitResult:
    """One entry per row of ``MSRVTT_JSFUSION_test.csv`` (its ``sentence``), with timestamps.

    The paper names this file ``val.json``: it is the MSR-VTT 1k-A test set.

    Args:
        data: the parsed ``MSRVTT_data.json`` for timestamps and video order (None: the
            CSV order, no timestamps).
        rows: the CSV rows (``video_id`` and ``sentence``).
        catalog: the videos present; None keeps all with ``default_extension``.
    """
    report = SplitReport("msrvtt", split)
    resolve = _Resolver(catalog, default_extension)
    timestamps = _msrvtt_timestamps(data) if data is not None else {}
    sentences: dict[str, list[str]] = {}
    for row in rows:
        vid = (row.get("video_id") or "").strip()
        if not vid:
            continue
        sentence = row.get("sentence")
        bucket = sentences.setdefault(vid, [])
        if isinstance(sentence, str) and sentence.strip():
            bucket.append(sentence)
        else:
            report.drop(DropReason.EMPTY_CAPTION, vid)
    ordered = list(sentences) if data is None else _msrvtt_video_order(data, list(sentences))
    report.videos_in = len(ordered)
    missing_ts = 0
    annots: dict[str, dict[str, Any]] = {}
    for vid in ordered:
        ext = resolve(vid)
        if ext is None:
            report.drop(DropReason.MISSING_VIDEO, vid)
        elif not sentences[vid]:
            report.drop(DropReason.NO_CAPTIONS, vid)
        else:
            ts = timestamps.get(vid)
            missing_ts += ts is None
            annots[vid] = _msrvtt_entry(ext, ts, sentences[vid])
    if missing_ts:
        report.notes.append(f"{missing_ts} videos have no timestamps (not in MSRVTT_data.json)")
    return _finish(annots, report)


def _msrvtt_entry(
    ext: str, timestamps: list[list[Any]] | None, sentences: list[str]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"extension": ext}
    if timestamps is not None:
        entry["timestamps"] = timestamps
    entry["sentences"] = sentences
    return entry


# -------------------------------------------------------------------------- DiDeMo
def didemo_moment_seconds(times: Sequence[Sequence[float]]) -> list[float]:
    """``[start, end]`` seconds of a LocalizingMoments moment.

    ``times`` holds one ``[first, last]`` pair of 5-second segment indices (inclusive)
    per annotator. As CLIP4Clip does: the mean first segment times 5, and the end of the
    mean last segment, ``(mean last + 1) * 5``.
    """
    if not times:
        raise ValueError("a moment needs at least one [start, end] segment pair")
    starts = [float(t[0]) for t in times]
    ends = [float(t[1]) for t in times]
    start = sum(starts) / len(starts) * DIDEMO_SEGMENT_S
    end = (sum(ends) / len(ends) + 1.0) * DIDEMO_SEGMENT_S
    return [start, end]


def build_didemo_split(
    moments: Iterable[Mapping[str, Any]],
    catalog: VideoCatalog | None = None,
    *,
    split: str,
    split_list: Iterable[str] | None = None,
    timestamps: bool = False,
    default_extension: str = "mp4",
) -> SplitResult:
    """One entry per video of a LocalizingMoments file, its descriptions as sentences.

    Args:
        moments: the parsed ``{split}_data.json`` (a list of moments).
        catalog: the videos present; None keeps all with ``default_extension``.
        split: the split's name, for the report.
        split_list: only these videos (Collaborative Experts' ``{split}_list.txt``).
        timestamps: add ``"timestamps"`` (seconds, :func:`didemo_moment_seconds`); the
            paper's files have none.
    """
    report = SplitReport("didemo", split)
    resolve = _Resolver(catalog, default_extension)
    allowed = None if split_list is None else {s.strip() for s in split_list if s.strip()}
    grouped: dict[str, list[tuple[str, list[float] | None]]] = {}
    malformed: set[str] = set()
    for moment in moments:
        vid = str(moment.get("video", "")).strip()
        if not vid:
            continue
        bucket = grouped.setdefault(vid, [])
        description = moment.get("description")
        if not isinstance(description, str) or not description.strip():
            report.drop(DropReason.EMPTY_CAPTION, vid)
            continue
        if not description.endswith("."):
            description += "."
        span = None
        if timestamps:
            try:
                span = didemo_moment_seconds(moment.get("times") or [])
            except (ValueError, TypeError, IndexError):
                malformed.add(vid)
        bucket.append((description, span))
    report.videos_in = len(grouped)
    annots: dict[str, dict[str, Any]] = {}
    for vid, items in grouped.items():
        if allowed is not None and vid not in allowed:
            report.drop(DropReason.NOT_IN_SPLIT_LIST, vid)
            continue
        ext = resolve(vid)
        if ext is None:
            report.drop(DropReason.MISSING_VIDEO, vid)
        elif vid in malformed:
            report.drop(DropReason.MALFORMED, vid)
        elif not items:
            report.drop(DropReason.NO_CAPTIONS, vid)
        else:
            entry: dict[str, Any] = {"extension": ext, "sentences": [s for s, _ in items]}
            if timestamps:
                entry["timestamps"] = [span for _, span in items]
            annots[vid] = entry
    if allowed is not None:
        absent = sorted(allowed - set(grouped))
        for vid in absent:
            report.drop(DropReason.NO_CAPTIONS, vid)
        report.videos_in += len(absent)
    return _finish(annots, report)


# --------------------------------------------------------------------- ActivityNet
def build_activitynet_split(
    annot: Mapping[str, Mapping[str, Any]],
    catalog: VideoCatalog | None = None,
    *,
    split: str,
    default_extension: str = "mp4",
) -> SplitResult:
    """One entry per video of an ActivityNet Captions file, values as they are.

    Args:
        annot: the parsed ``train.json`` / ``val_1.json``.
        catalog: the videos present; None keeps all with ``default_extension``.
        split: the split's name, for the report.
    """
    report = SplitReport("activitynet", split)
    resolve = _Resolver(catalog, default_extension)
    report.videos_in = len(annot)
    annots: dict[str, dict[str, Any]] = {}
    for vid, data in annot.items():
        ext = resolve(vid)
        sentences = data.get("sentences") if isinstance(data, Mapping) else None
        spans = data.get("timestamps") if isinstance(data, Mapping) else None
        if ext is None:
            report.drop(DropReason.MISSING_VIDEO, vid)
        elif not sentences:
            report.drop(DropReason.NO_CAPTIONS, vid)
        elif (
            not isinstance(sentences, list)
            or not all(isinstance(s, str) for s in sentences)
            or (spans is not None and (not isinstance(spans, list) or len(spans) != len(sentences)))
        ):
            report.drop(DropReason.MALFORMED, vid)
        elif not any(s.strip() for s in sentences):
            report.drop(DropReason.NO_CAPTIONS, vid)
        else:
            entry: dict[str, Any] = {"extension": ext, "sentences": sentences}
            if spans is not None:
                entry["timestamps"] = spans
            if "duration" in data:
                entry["duration"] = data["duration"]
            annots[vid] = entry
    return _finish(annots, report)


def _finish(annots: dict[str, dict[str, Any]], report: SplitReport) -> SplitResult:
    report.videos_kept = len(annots)
    report.sentences_kept = sum(len(e["sentences"]) for e in annots.values())
    return SplitResult(annots, report)


# --------------------------------------------------------------- files and folders
def dump_split(annots: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a split file exactly as the paper's tools do (``json.dump`` defaults)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(annots), encoding="utf-8")
    return out


def _load_json(path: Path) -> Any:
    with path.open("rb") as f:
        return json.load(f)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _write_all(
    dataset: str,
    results: dict[str, SplitResult],
    out_dir: Path,
    catalog: VideoCatalog | None,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"dataset": dataset, "out_dir": str(out_dir), "splits": {}}
    for name, result in results.items():
        path = dump_split(result.annots, out_dir / f"{name}.json")
        split_report = result.report.to_dict()
        split_report["output"] = str(path)
        report["splits"][name] = split_report
    if catalog is not None:
        referenced = [vid for r in results.values() for vid in r.annots]
        unused = catalog.unreferenced(referenced)
        report["videos_available"] = len(catalog)
        report["videos_unreferenced"] = len(unused)
        report["videos_unreferenced_examples"] = unused[:20]
    return report


def prepare_msrvtt(
    data_json: str | os.PathLike[str],
    train_csv: str | os.PathLike[str] | None,
    test_csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    catalog: VideoCatalog | None = None,
    *,
    default_extension: str = "mp4",
) -> dict[str, Any]:
    """Write ``train.json`` (9k) and ``val.json`` (JSFusion 1k-A) into ``out_dir``."""
    data_path = Path(data_json)
    data = _load_json(data_path)
    results: dict[str, SplitResult] = {}
    if train_csv is not None:
        ids = [r["video_id"].strip() for r in _read_csv(Path(train_csv)) if r.get("video_id")]
        res = build_msrvtt_train(data, ids, catalog, default_extension=default_extension)
        res.report.sources = [str(data_path), str(train_csv)]
        results["train"] = res
    if test_csv is not None:
        rows = _read_csv(Path(test_csv))
        res = build_msrvtt_test(data, rows, catalog, default_extension=default_extension)
        res.report.sources = [str(data_path), str(test_csv)]
        results["val"] = res
    if not results:
        raise ValueError("msrvtt: give the train csv, the test csv or both")
    return _write_all("msrvtt", results, Path(out_dir), catalog)


def prepare_didemo(
    data_files: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    catalog: VideoCatalog | None = None,
    *,
    split_lists: Mapping[str, str | os.PathLike[str]] | None = None,
    timestamps: bool = False,
    default_extension: str = "mp4",
) -> dict[str, Any]:
    """Write ``{split}.json`` for each ``split -> {split}_data.json`` of ``data_files``."""
    results: dict[str, SplitResult] = {}
    for split, path in data_files.items():
        listed = split_lists.get(split) if split_lists else None
        res = build_didemo_split(
            _load_json(Path(path)),
            catalog,
            split=split,
            split_list=_read_list(Path(listed)) if listed is not None else None,
            timestamps=timestamps,
            default_extension=default_extension,
        )
        res.report.sources = [str(path)] + ([str(listed)] if listed is not None else [])
        results[split] = res
    return _write_all("didemo", results, Path(out_dir), catalog)


def prepare_activitynet(
    data_files: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    catalog: VideoCatalog | None = None,
    *,
    default_extension: str = "mp4",
) -> dict[str, Any]:
    """Write ``{split}.json`` for each ``split -> file`` (``train.json``, ``val_1.json``)."""
    results: dict[str, SplitResult] = {}
    for split, path in data_files.items():
        res = build_activitynet_split(
            _load_json(Path(path)), catalog, split=split, default_extension=default_extension
        )
        res.report.sources = [str(path)]
        results[split] = res
    return _write_all("activitynet", results, Path(out_dir), catalog)


# ----------------------------------------------------------------------------- CLI
def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / "msrvtt_data" / name):
            if candidate.is_file():
                return candidate
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adaclip prepare",
        description="Build split files in the paper's schema from the original annotation "
        "downloads, restricted to the videos present, with a report of what was dropped.",
    )
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument(
        "--annots",
        required=True,
        help="folder of the original annotation files (msrvtt: MSRVTT_data.json, "
        "MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv; didemo: {train,val,test}_data.json "
        "[+ {split}_list.txt]; activitynet: train.json, val_1.json)",
    )
    p.add_argument("--out", required=True, help="output folder for the split files")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--videos-root", help="local folder holding <video_id>.<ext>")
    where.add_argument(
        "--videos-list",
        help="text file of available video names (one a line; paths, s3 keys or URIs fine), "
        "e.g. from `aws s3 ls` or the index job's listing",
    )
    p.add_argument("--extension", default="mp4", help="extension preferred / used without videos")
    p.add_argument("--report", help="report path (default: <out>/prepare_report.json)")
    p.add_argument(
        "--splits",
        nargs="+",
        help="splits to build (default: all the dataset's files found in --annots)",
    )
    p.add_argument(
        "--didemo-timestamps",
        action="store_true",
        help="didemo: add timestamps in seconds from the 5-second segment indices",
    )
    p.add_argument(
        "--no-split-lists",
        action="store_true",
        help="didemo: ignore {split}_list.txt files (Collaborative Experts' splits)",
    )
    return p


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """``adaclip prepare``: returns 0, or 2 when an input file is missing."""
    args = _parser().parse_args(argv)
    annots = Path(args.annots)
    out = Path(args.out)
    catalog: VideoCatalog | None = None
    if args.videos_root:
        catalog = VideoCatalog.from_folder(args.videos_root, args.extension)
    elif args.videos_list:
        catalog = VideoCatalog.from_listing(args.videos_list, args.extension)
    wanted = set(args.splits) if args.splits else None
    try:
        report = _run(args, annots, out, catalog, wanted)
    except FileNotFoundError as exc:
        print(f"adaclip prepare: {exc}", file=sys.stderr)
        return 2
    report_path = Path(args.report) if args.report else out / "prepare_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for name, split in report["splits"].items():
        counts = ", ".join(f"{k} {v}" for k, v in split["dropped_counts"].items()) or "none"
        print(
            f"{args.dataset} {name}: {split['videos_kept']}/{split['videos_in']} videos, "
            f"{split['sentences_kept']} sentences -> {split['output']} (dropped: {counts})"
        )
    print(f"report: {report_path}")
    return 0


def _run(
    args: argparse.Namespace,
    annots: Path,
    out: Path,
    catalog: VideoCatalog | None,
    wanted: set[str] | None,
) -> dict[str, Any]:
    def keep(split: str) -> bool:
        return wanted is None or split in wanted

    if args.dataset == "msrvtt":
        data = _first_existing(annots, ["MSRVTT_data.json"])
        if data is None:
            raise FileNotFoundError(f"{annots}: no MSRVTT_data.json")
        train = _first_existing(annots, ["MSRVTT_train.9k.csv"]) if keep("train") else None
        test = _first_existing(annots, ["MSRVTT_JSFUSION_test.csv"]) if keep("val") else None
        if train is None and test is None:
            raise FileNotFoundError(f"{annots}: no MSRVTT_train.9k.csv / MSRVTT_JSFUSION_test.csv")
        return prepare_msrvtt(data, train, test, out, catalog, default_extension=args.extension)
    if args.dataset == "didemo":
        files = {
            s: annots / f"{s}_data.json"
            for s in ("train", "val", "test")
            if keep(s) and (annots / f"{s}_data.json").is_file()
        }
        if not files:
            raise FileNotFoundError(f"{annots}: no {{train,val,test}}_data.json")
        lists = (
            {}
            if args.no_split_lists
            else {
                s: annots / f"{s}_list.txt" for s in files if (annots / f"{s}_list.txt").is_file()
            }
        )
        return prepare_didemo(
            files,
            out,
            catalog,
            split_lists=lists,
            timestamps=args.didemo_timestamps,
            default_extension=args.extension,
        )
    sources = {"train": "train.json", "val": "val_1.json"}
    files = {s: annots / n for s, n in sources.items() if keep(s) and (annots / n).is_file()}
    if not files:
        raise FileNotFoundError(f"{annots}: no train.json / val_1.json")
    return prepare_activitynet(files, out, catalog, default_extension=args.extension)


if __name__ == "__main__":
    sys.exit(prepare_main())
