"""Annotation loaders, caption sampling, settings and schedule: no Ray needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaclip.config import AdaClipConfig
from train.datasets import (
    AnnotationError,
    load_split,
    paragraph,
    parse_annotations,
    resolve_videos,
    sample_caption,
)
from train.loop import lr_factor
from train.settings import (
    CONFIGS_DIR,
    EvalSettings,
    TrainSettings,
    parse_num_workers,
    parse_with_config,
)

ANNOTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "annots"
needs_annots = pytest.mark.skipif(not ANNOTS.is_dir(), reason="shared/data/annots not present")


@needs_annots
@pytest.mark.parametrize(
    ("folder", "split", "dataset", "videos", "sentences"),
    [
        ("msrvtt-jsfusion", "val", "msrvtt", 1000, 1000),
        ("didemo", "train", "didemo", 8392, 32724),
        ("didemo", "val", "didemo", 1065, 4109),
        ("didemo", "test", "didemo", 1004, 3932),
        ("activitynet", "val", "activitynet", 4917, 17505),
    ],
)
def test_real_annotation_counts(
    folder: str, split: str, dataset: str, videos: int, sentences: int
) -> None:
    records = load_split(ANNOTS / folder, split, dataset)
    assert len(records) == videos
    raw = json.loads((ANNOTS / folder / f"{split}.json").read_text())
    assert sum(len(v["sentences"]) for v in raw.values()) == sentences
    if dataset == "msrvtt":
        assert sum(len(r.captions) for r in records) == sentences  # every caption a query
    else:
        assert all(len(r.captions) == 1 for r in records)  # one paragraph per video
    assert all(r.extension == raw[r.video_id]["extension"].lstrip(".") for r in records)


@needs_annots
def test_paragraphs_join_sentences_of_real_files() -> None:
    raw = json.loads((ANNOTS / "activitynet" / "val.json").read_text())
    records = {r.video_id: r for r in load_split(ANNOTS / "activitynet", "val", "activitynet")}
    vid = "v_uqiMw7tQ1Cc"
    expected = " ".join(s.strip() for s in raw[vid]["sentences"])
    assert records[vid].captions == (expected,)
    assert "  " not in records[vid].captions[0]
    # DiDeMo ids carry their original file name; the file is <id>.<extension>
    didemo = load_split(ANNOTS / "didemo", "test", "didemo")
    assert didemo[0].filename == f"{didemo[0].video_id}.mp4"


def test_paragraph_and_caption_modes() -> None:
    data = {
        "b": {"extension": ".avi", "sentences": [" one. ", "two.", "  "]},
        "a": {"sentences": ["x"]},
    }
    para = parse_annotations(data, "didemo")
    assert [r.video_id for r in para] == ["a", "b"]
    assert para[1].captions == ("one. two.",)
    assert para[1].filename == "b.avi"
    caps = parse_annotations(data, "msrvtt")
    assert caps[1].captions == ("one.", "two.")
    assert paragraph(["a ", " b"]) == "a b"
    with pytest.raises(AnnotationError):
        parse_annotations({"v": {"sentences": "not a list"}}, "msrvtt")
    with pytest.raises(AnnotationError):
        parse_annotations(data, "kinetics")


def test_caption_sampling_changes_per_epoch_and_is_deterministic() -> None:
    captions = [f"caption {i}" for i in range(20)]
    draws = [sample_caption(captions, 0, epoch, "video1") for epoch in range(10)]
    assert len(set(draws)) > 3  # varies across epochs
    assert draws == [sample_caption(captions, 0, e, "video1") for e in range(10)]
    assert sample_caption(["only"], 0, 5, "v") == "only"


def test_missing_videos_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "c.webm").write_bytes(b"x")
    records = parse_annotations(
        {
            "a": {"extension": "mp4", "sentences": ["s"]},
            "b": {"extension": "mp4", "sentences": ["s"]},
            "c": {"extension": "webm", "sentences": ["s"]},
            "d": {"extension": "mp4", "sentences": ["s"]},
        },
        "msrvtt",
    )
    resolved = resolve_videos(records, str(tmp_path))
    assert [r.video_id for r in resolved.records] == ["a", "c"]
    assert resolved.missing == ["b", "d"]
    assert resolved.uris[1].endswith("c.webm")


def test_settings_config_file_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"_comment": "x", "top-k": 5, "num_candidates": 10, "batch_size": 7}))
    monkeypatch.setenv("ADACLIP_NUM_CANDIDATES", "12")
    s = parse_with_config(
        TrainSettings,
        ["--config", str(cfg), "--batch-size", "9", "--frame-selection", "uniform"],
        "t",
    )
    assert (s.top_k, s.num_candidates, s.batch_size, s.frame_selection) == (5, 12, 9, "uniform")
    synthetic = parse_with_config(
        TrainSettings, ["--config", str(CONFIGS_DIR / "synthetic.json"), "--videos-root", "d"], "t"
    )
    assert synthetic.annotations_dir == "d" and synthetic.arch == "tiny"
    e = parse_with_config(EvalSettings, ["ckpt", "--split", "val"], "e")
    assert (e.checkpoint, e.split) == ("ckpt", "val")


@pytest.mark.parametrize(
    ("name", "n", "k", "text", "batch"),
    [("msrvtt", 16, 12, 32, 192), ("didemo", 32, 16, 64, 96), ("activitynet", 64, 32, 64, 48)],
)
def test_paper_configs(name: str, n: int, k: int, text: int, batch: int) -> None:
    s = parse_with_config(TrainSettings, ["--config", str(CONFIGS_DIR / f"{name}.json")], "t")
    assert (s.dataset, s.num_candidates, s.top_k, s.max_text_len, s.batch_size) == (
        name,
        n,
        k,
        text,
        batch,
    )
    assert s.val_split != s.test_split  # model selection never on the test split


@pytest.mark.parametrize("name", ["msrvtt", "didemo", "activitynet"])
def test_paper_comparison_configs(name: str) -> None:
    """Each dataset ships AdaCLIP, the paper's baseline (all N, mean) and uniform K + MLP."""
    from adaclip.clip_backbone import resolve_model_cfg
    from train.run import build_model_config

    def model_config(variant: str) -> AdaClipConfig:
        path = CONFIGS_DIR / f"{variant}.json"
        return build_model_config(parse_with_config(TrainSettings, ["--config", str(path)], "t"))

    ada, base, uni = (model_config(f"{name}{v}") for v in ("", "_baseline", "_uniform"))
    n, k = ada.num_candidates, ada.top_k
    assert (ada.frame_selection, ada.aggregation, ada.top_k) == ("policy", "mlp", k)
    assert (base.frame_selection, base.aggregation, base.top_k) == ("all", "mean", n)
    assert (uni.frame_selection, uni.aggregation, uni.top_k) == ("uniform", "mlp", k)
    assert not base.uses_policy and not uni.uses_policy
    for cfg in (ada, base, uni):  # OpenAI weights: QuickGELU, decided by the tag's config
        assert (cfg.clip.arch, cfg.clip.pretrained) == ("ViT-B-32", "openai")
        assert resolve_model_cfg(cfg.clip)["quick_gelu"] is True


def test_num_workers_and_schedule() -> None:
    assert parse_num_workers("3") == 3
    assert parse_num_workers("1,4") == (1, 4)
    for bad in ("0", "4,1", "a", "1,2,3"):
        with pytest.raises(ValueError):
            parse_num_workers(bad)
    assert lr_factor(0.0, 0.1) == 0.0
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-9)
