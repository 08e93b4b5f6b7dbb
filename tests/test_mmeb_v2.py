"""MMEB-V2: the 78-task table, ranking metrics against a hand calculation, and a three-task run end to end (one
image, one video, one visual-document task) in VLM2Vec-V2's local layout, built here from the sample images, an
MP4 encoded with PyAV, frame folders and pages rendered from text."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from test_vlm2vec_video import COCO, sample_images, save_video_qwen, write_frames, write_mp4
from vlm2vec_helpers import single_thread  # noqa: F401

from core.ir_metrics import ranking_metrics
from core.protocol import EmbedInput
from evaluate import mmeb_v2
from evaluate.cli import main
from evaluate.layouts.base import LayoutError
from evaluate.layouts.mmeb_v2 import MMEB_V2_BY_NAME, MMEB_V2_TASKS, VISDOC_QUERY, VISDOC_TARGET
from evaluate.results import EvalResult
from vlm2vec import VLM2VecModel


def test_task_table_counts_and_metrics():
    by_modality = {m: [t for t in MMEB_V2_TASKS if t.modality == m] for m in ("image", "video", "visdoc")}
    assert [len(v) for v in by_modality.values()] == [36, 18, 24]
    assert len(MMEB_V2_BY_NAME) == 78
    assert {t.metric for t in by_modality["image"] + by_modality["video"]} == {"hit@1"}
    assert {t.metric for t in by_modality["visdoc"]} == {"ndcg@5"}
    video_meta = {t.meta_task for t in by_modality["video"]}
    assert video_meta == {"classification", "vqa", "retrieval", "moment_retrieval"}
    assert sum(t.meta_task == "ViDoRe-V2" for t in by_modality["visdoc"]) == 4


def test_list_needs_no_model(capsys):
    assert main(["mmeb", "--version", "2", "--list"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 2 + 78 and "ViDoRe_esg_reports_v2_multilingual" in out
    assert main(["mmeb", "--list"]) == 0
    assert "Visual7W-Pointing" in capsys.readouterr().out


def test_ranking_metrics_by_hand():
    qrels = {"q1": {"d2": 2, "d5": 1, "d7": 3}, "q2": {"d1": 1, "d3": 0}}
    run = {
        "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6, "d5": 0.5, "d6": 0.4},
        "q2": {"d1": 0.9, "d3": 0.8, "d2": 0.1},
    }
    got = ranking_metrics(qrels, run, ks=(1, 5))
    # q1: relevant at ranks 2 (grade 2) and 5 (grade 1); the ideal ranks grades 3, 2, 1 (linear gain)
    dcg = 2 / math.log2(3) + 1 / math.log2(6)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    ndcg_q1 = dcg / idcg
    assert got["ndcg@5"] == pytest.approx((ndcg_q1 + 1.0) / 2, abs=1e-4)
    assert got["hit@1"] == pytest.approx(0.5)  # q1 misses at 1, q2 hits
    assert got["hit@5"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    ap_q1 = (1 / 2 + 2 / 5) / 3  # precision at each relevant rank, over the 3 relevant documents
    assert got["map"] == pytest.approx((ap_q1 + 1.0) / 2, abs=1e-4)


def render_page(text: str) -> Image.Image:
    page = Image.new("RGB", (120, 160), "white")
    ImageDraw.Draw(page).text((8, 8), text, fill="black")
    return page


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_layout(root: Path) -> None:
    coco = sorted(COCO.glob("*.jpg"))[:4]
    images = root / "image-tasks/MMEB"
    images.mkdir(parents=True)
    for path in coco:
        (images / path.name).write_bytes(path.read_bytes())
    names = [p.name for p in coco]
    captions = ["a photo of a cat", "a red car", "a green tree", "the blue sky"]
    rows = [
        {
            "qry_inst": "<|image_1|> Find an image caption describing the given everyday image.",
            "qry_text": "",
            "qry_img_path": names[i],
            "tgt_inst": "",
            "tgt_text": [captions[i], captions[(i + 1) % 4], captions[(i + 2) % 4]],
            "tgt_img_path": ["", "", ""],
        }
        for i in range(4)
    ]
    (root / "image-query/MSCOCO_i2t").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "image-query/MSCOCO_i2t/test-00000.parquet")

    frames = sample_images(12)
    task = MMEB_V2_BY_NAME["MSR-VTT"]
    write_frames(root / task.media / "video0", frames[:6])
    write_frames(root / task.media / "video1", frames[6:])
    (root / task.videos).mkdir(parents=True)
    write_mp4(root / task.videos / "video2.mp4", frames[3:9])  # no frame folder: read from the file
    data = root / task.data
    data.parent.mkdir(parents=True)
    lines = [{"video_id": f"video{i}", "video": f"video{i}.mp4", "caption": captions[i]} for i in range(3)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))

    task = MMEB_V2_BY_NAME["ViDoRe_arxivqa"]
    base = root / task.data
    for part in ("queries", "corpus", "qrels"):
        (base / part).mkdir(parents=True)
    texts = ["revenue grew in 2023", "the cat sat on the mat", "blue sky report", "tree census", "car sales"]
    pages = root / task.media
    pages.mkdir(parents=True)
    for i, text in enumerate(texts[:3]):  # pages 0-2 as PNG files, 3-4 only as bytes in the corpus parquet
        render_page(text).save(pages / f"doc{i}.png")
    corpus = [
        {"corpus-id": f"doc{i}", "image": {"bytes": png_bytes(render_page(t)), "path": None}}
        for i, t in enumerate(texts)
    ]
    pd.DataFrame(corpus).to_parquet(base / "corpus/test-00000.parquet")
    queries = [{"query-id": f"q{i}", "query": q} for i, q in enumerate(["revenue", "cat", "sky", "unjudged"])]
    pd.DataFrame(queries).to_parquet(base / "queries/test-00000.parquet")
    qrels = [("q0", "doc0", 1), ("q0", "doc4", 2), ("q1", "doc1", 1), ("q1", "doc1", 2), ("q2", "doc2", 1),
             ("q2", "doc3", 0), ("q3", "doc3", 0)]  # fmt: skip
    pd.DataFrame(qrels, columns=["query-id", "corpus-id", "score"]).to_parquet(
        base / "qrels/test-00000.parquet"
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmeb-v2")
    build_layout(root)
    return root


def test_readers_validate_and_grade(layout, tmp_path):
    from evaluate.layouts.mmeb_v2 import read_task

    visdoc = read_task(layout, MMEB_V2_BY_NAME["ViDoRe_arxivqa"])
    assert len(visdoc.candidates) == 5 and len(visdoc.queries) == 3  # q3 has no relevant page: dropped
    assert visdoc.qrels == [{0: 1, 4: 2}, {1: 2}, {2: 1}]  # highest grade kept, grade 0 dropped
    assert isinstance(visdoc.candidates[0].image, Path) and isinstance(visdoc.candidates[4].image, bytes)
    video = read_task(layout, MMEB_V2_BY_NAME["MSR-VTT"])
    assert [c.video.name for c in video.candidates] == ["video0", "video1", "video2.mp4"]
    image = read_task(layout, MMEB_V2_BY_NAME["MSCOCO_i2t"])
    assert image.local is not None and all(image.qrels[i] == {row[0]: 1} for i, row in enumerate(image.local))
    with pytest.raises(LayoutError, match="didemo.jsonl not found"):
        read_task(layout, MMEB_V2_BY_NAME["DiDeMo"])
    with pytest.raises(LayoutError, match="unknown MMEB-V2 tasks"):
        mmeb_v2.select_tasks(layout, ["MSCOCO-i2t"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = save_video_qwen(tmp_path_factory.mktemp("qwen") / "model")
    out = tmp_path_factory.mktemp("export") / "model"
    VLM2VecModel.from_pretrained(path).save_pretrained(out)
    return out


def ndcg_at_5(scores: np.ndarray, grades: dict[int, int]) -> float:
    order = np.argsort(-scores, kind="stable")[:5]
    dcg = sum(grades.get(int(c), 0) / math.log2(rank + 2) for rank, c in enumerate(order))
    ideal = sorted(grades.values(), reverse=True)[:5]
    return dcg / sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))


def test_three_task_run_end_to_end(layout, tiny_model, tmp_path):
    output = tmp_path / "result.json"
    argv = [
        "mmeb",
        "--version",
        "2",
        "--model",
        str(tiny_model),
        "--data",
        str(layout),
        "--output",
        str(output),
    ]
    assert main([*argv, "--no-cache", "--batch-size", "4"]) == 0
    result = EvalResult.load(output)
    per_task = result.details["per_task"]
    assert set(per_task) == {"MSCOCO_i2t", "MSR-VTT", "ViDoRe_arxivqa"}
    assert result.counts == {"MSCOCO_i2t": 4, "MSR-VTT": 3, "ViDoRe_arxivqa": 3, "tasks": 3}
    main_scores = [
        per_task["MSCOCO_i2t"]["hit@1"],
        per_task["MSR-VTT"]["hit@1"],
        per_task["ViDoRe_arxivqa"]["ndcg@5"],
    ]
    assert result.metrics["image"] == pytest.approx(main_scores[0])
    assert result.metrics["video"] == pytest.approx(main_scores[1])
    assert result.metrics["visdoc"] == pytest.approx(main_scores[2])
    assert result.metrics["visdoc/ViDoRe-V1"] == pytest.approx(main_scores[2])
    assert result.metrics["overall"] == pytest.approx(sum(main_scores) / 3)
    assert result.details["published"] == {}  # no modality was run in full
    assert all(0.0 <= v <= 100.0 for v in result.metrics.values())

    # NDCG@5 of the visdoc task recomputed by hand from the model's own embeddings
    model = VLM2VecModel.from_pretrained(tiny_model)
    texts = ["revenue", "cat", "sky"]
    queries = model.encode([EmbedInput(text=t, instruction=VISDOC_QUERY) for t in texts])
    pages = [
        render_page(t)
        for t in [
            "revenue grew in 2023",
            "the cat sat on the mat",
            "blue sky report",
            "tree census",
            "car sales",
        ]
    ]
    pages = [Image.open(io.BytesIO(png_bytes(p))).convert("RGB") for p in pages]
    docs = model.encode([EmbedInput(image=p, instruction=VISDOC_TARGET) for p in pages])
    scores = (queries.double() @ docs.double().T).numpy()
    grades = [{0: 1, 4: 2}, {1: 2}, {2: 1}]
    expected = 100 * np.mean([ndcg_at_5(scores[i], grades[i]) for i in range(3)])
    assert per_task["ViDoRe_arxivqa"]["ndcg@5"] == pytest.approx(expected, abs=1e-3)

    # --subsets picks tasks; published numbers appear only for a whole modality
    assert (
        main([*argv[:-2], "--output", str(tmp_path / "one.json"), "--no-cache", "--subsets", "MSR-VTT"]) == 0
    )
    assert set(EvalResult.load(tmp_path / "one.json").details["per_task"]) == {"MSR-VTT"}
    full = {t.name for t in MMEB_V2_TASKS if t.modality == "video"}
    assert set(mmeb_v2.published_beside(sorted(full))) == {"VLM2Vec-V2-2B [VLM2Vec-V2 paper]"}
    assert torch.is_tensor(queries)
