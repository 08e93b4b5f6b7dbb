"""MMEB as distributed: the hub's parquet-conversion layout, the newer instruction annotations (composed as the
reference's V2 parsers do), blank candidates scored as the empty text (score fusion and interleaved models),
dangling placeholders, one command over many datasets resumable per dataset (one process and torchrun), and
published baselines only beside complete meta-tasks or all 36 datasets.

The reference facts (TIGER-AI-Lab/VLM2Vec main, `src/data/eval_dataset/image_*.py`, dispatched by
`experiments/public/eval/image.yaml`): `process_input_text(inst, text, add_image_token=True)` is
`TOKEN + " " + inst [+ " " + text]`; classification / i2t queries drop the placeholder from `qry_inst`, QA and
i2i / grounding queries use `"\\n" + qry_inst.strip()`; then `.replace(" \\n", "\\n") + "\\n"`; t2i queries are
`qry_inst + " " + qry_text + "\\n"` (VisDial one more "\\n"); t2i / i2i candidates are
`process_input_text(tgt_inst + " " + caption)` or, without captions, `process_input_text(tgt_inst)`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from evaluate_helpers import (
    PALETTE,
    FakeModel,
    InterleavedRecorder,
    Interrupted,
    save_image,
    use_fake_checkpoints,
    use_recorder_checkpoints,
)

from core.protocol import EmbedInput, fused_encode
from evaluate.cli import main
from evaluate.datasets import LayoutError, load_mmeb
from evaluate.models import ModelSpecError, load_model
from evaluate.references import MMEB_DATASETS, MMEB_EVAL_ROWS
from evaluate.results import EvalResult, report_table

REPO = Path(__file__).resolve().parents[1]
P = "<|image_1|>"


def _write(root: Path, name: str, rows: dict, layout: str = "hub") -> None:
    folder = root / name / ("test" if layout == "conversion" else "")
    folder.mkdir(parents=True, exist_ok=True)
    file = "0000.parquet" if layout == "conversion" else "test-00000-of-00001.parquet"
    pd.DataFrame(rows).to_parquet(folder / file)


def test_parquet_conversion_and_newer_annotations_compose_as_the_reference(tmp_path):
    data, images = tmp_path / "MMEB", tmp_path / "image-tasks"
    for name, colour in (("a.jpg", PALETTE[0]), ("b.jpg", PALETTE[1]), ("c.jpg", PALETTE[2])):
        save_image(images / name, colour)
    _write(data, "ImageNet-1K", {  # classification rows without tgt_img_path
        "qry_inst": [f"{P} Represent the given image for classification"], "qry_text": [""],
        "qry_img_path": ["a.jpg"], "tgt_text": [["cat", "dog"]],
    }, layout="conversion")  # fmt: skip
    _write(data, "OK-VQA", {
        "qry_inst": [f"{P} Represent the given image with the following question: "], "qry_text": ["what is it ?"],
        "qry_img_path": ["a.jpg"], "tgt_text": [["a cat", "a dog"]],
    })  # fmt: skip
    _write(data, "VisDial", {
        "qry_inst": ["Represent the given dialogue about an image:"], "qry_text": ["Q: is it red ?"],
        "tgt_inst": [f"{P} Represent the given image.\n"], "tgt_text": [["", ""]],
        "tgt_img_path": [["a.jpg", "b.jpg"]],
    }, layout="conversion")  # fmt: skip
    _write(data, "CIRR", {
        "qry_inst": [f"{P} Given an image, find a similar everyday image with the described changes: "],
        "qry_text": ["make it blue"], "qry_img_path": ["a.jpg"],
        "tgt_inst": [f"{P} Represent the given image.\n"], "tgt_text": [["", ""]],
        "tgt_img_path": [["c.jpg", "b.jpg"]],
    })  # fmt: skip
    _write(data, "WebQA", {
        "qry_inst": ["Find a Wikipedia image that answers this question:"], "qry_text": ["which car ?"],
        "tgt_inst": [f"{P} Represent the given Wikipedia image with related text information:"],
        "tgt_text": [["red car .", "blue sky ."]], "tgt_img_path": [["a.jpg", "c.jpg"]],
    })  # fmt: skip
    names = ["ImageNet-1K", "OK-VQA", "VisDial", "CIRR", "WebQA"]
    subsets = {s.name: s for s in load_mmeb(data, names, images)}
    assert {s.name: (s.layout, s.annotation) for s in subsets.values()} == {
        "ImageNet-1K": ("parquet conversion", "instructions"),
        "OK-VQA": ("TIGER-Lab/MMEB-eval", "instructions"),
        "VisDial": ("parquet conversion", "instructions"),
        "CIRR": ("TIGER-Lab/MMEB-eval", "instructions"),
        "WebQA": ("TIGER-Lab/MMEB-eval", "instructions"),
    }
    # image_cls: placeholder out of qry_inst, TOKEN + " " + inst, .replace(" \n", "\n") + "\n"
    assert subsets["ImageNet-1K"].query_texts == [f"{P}  Represent the given image for classification\n"]
    assert subsets["ImageNet-1K"].query_images == [images / "a.jpg"]
    assert subsets["ImageNet-1K"].target_texts == [["cat", "dog"]]
    assert subsets["ImageNet-1K"].target_images == [[None, None]]
    # image_qa: "\n" + inst.strip(), then + " " + text
    assert subsets["OK-VQA"].query_texts == [
        f"{P}\nRepresent the given image with the following question: what is it ?\n"
    ]
    # image_t2i: a text query, instruction + " " + text + "\n" (+ "\n" for VisDial); caption-less candidates
    # process_input_text(tgt_inst) + "\n" each
    assert subsets["VisDial"].query_texts == [
        "Represent the given dialogue about an image: Q: is it red ?\n\n"
    ]
    assert subsets["VisDial"].query_images == [None]
    assert subsets["VisDial"].target_texts == [[f"{P}  Represent the given image.\n\n"] * 2]
    # image_i2i_vg: as QA for the query; caption-less candidates without the extra "\n"
    assert subsets["CIRR"].query_texts == [
        f"{P}\nGiven an image, find a similar everyday image with the described changes: make it blue\n"
    ]
    assert subsets["CIRR"].target_texts == [[f"{P}  Represent the given image.\n"] * 2]
    assert subsets["CIRR"].target_images == [[images / "c.jpg", images / "b.jpg"]]
    # captioned candidates: process_input_text(tgt_inst + " " + caption) + "\n"
    assert subsets["WebQA"].target_texts == [
        [
            f"{P}  Represent the given Wikipedia image with related text information: red car .\n",
            f"{P}  Represent the given Wikipedia image with related text information: blue sky .\n",
        ]
    ]


def test_unknown_layouts_list_the_accepted_ones(tmp_path):
    data = tmp_path / "MMEB"
    (data / "eval_images").mkdir(parents=True)
    (data / "OK-VQA" / "validation").mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_parquet(data / "OK-VQA" / "validation" / "0000.parquet")
    with pytest.raises(LayoutError) as error:
        load_mmeb(data, ["OK-VQA"])
    message = str(error.value)
    assert "not split 'test'" in message and "parquet conversion" in message and "newer image-task" in message
    _write(data, "GQA", {"qry_text": ["q"], "tgt_text": [["a", "b"]]})
    with pytest.raises(LayoutError, match=r"missing columns \['qry_img_path', 'tgt_img_path'\]"):
        load_mmeb(data, ["GQA"])


def _blank_fixture(tmp_path: Path) -> Path:
    """OK-VQA with one blank candidate (as MMEB-eval's has) and a WebQA text query with a dangling placeholder."""
    data = tmp_path / "MMEB"
    save_image(data / "eval_images" / "q.jpg", PALETTE[0])
    save_image(data / "eval_images" / "r.jpg", PALETTE[1])
    _write(data, "OK-VQA", {
        "qry_text": [f"{P} Represent the given image with the following question: what is red ?\n"] * 2,
        "qry_img_path": ["q.jpg", "r.jpg"],
        "tgt_text": [["apple\n", "", "sky\n"], ["", "apple\n", "sky\n"]], "tgt_img_path": [["", "", ""]] * 2,
    })  # fmt: skip
    _write(data, "WebQA", {
        "qry_text": [f"{P} Find a Wikipedia image that answers this question: which car ?\n"],
        "qry_img_path": [""], "tgt_text": [["red car\n", "sky\n"]], "tgt_img_path": [["q.jpg", "r.jpg"]],
    })  # fmt: skip
    return data


def test_blank_candidates_are_kept_and_scored_as_the_empty_text(tmp_path, monkeypatch, caplog):
    use_fake_checkpoints(monkeypatch)
    data = _blank_fixture(tmp_path)
    with caplog.at_level(logging.INFO, logger="evaluate.datasets"):
        subsets = {s.name: s for s in load_mmeb(data, ["OK-VQA", "WebQA"])}
    assert subsets["OK-VQA"].blank_candidates == 2 and subsets["OK-VQA"].target_texts[0][1] == ""
    assert subsets["OK-VQA"].query_texts[0].endswith("what is red ?\n")  # verbatim, trailing newline kept
    assert subsets["WebQA"].dangling_image_tokens == 1
    assert subsets["WebQA"].query_texts == [
        "Find a Wikipedia image that answers this question: which car ?\n"
    ]
    assert "blank candidates kept as the empty text: 2 {'OK-VQA': 2}" in caplog.text
    assert "removed from 1 text-only inputs {'WebQA': 1}" in caplog.text

    # score fusion embeds "" with encode_text; the blank is the best candidate of query 2 only
    texts = {
        "Represent the given image with the following question: what is red ?": [1, 0, 0],
        "apple": [1, 0.1, 0],
        "sky": [0, 0, 1],
        "": [0.5, 1, 0],
        "Find a Wikipedia image that answers this question: which car ?": [1, 0, 0],
        "red car": [0, 0, 1],
    }
    model = FakeModel({PALETTE[0]: [1, 0, 0], PALETTE[1]: [0, 1, 0]}, texts)
    fused = fused_encode(model, [EmbedInput(text=""), EmbedInput(text="sky\n")])
    torch.testing.assert_close(fused[0], torch.nn.functional.normalize(torch.tensor([0.5, 1.0, 0.0]), dim=0))
    directory = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "result.json"
    args = ["mmeb", "--model", str(directory), "--data", str(data), "--output", str(out), "--no-cache"]
    assert main(args) == 0
    result = EvalResult.load(out)
    # q1 (red image + question: (1,0,0)): apple 0.995 over the blank 0.447 -> hit; q2 (green image: (1,1,0)/√2):
    # its positive is the blank (1.5/1.58 = 0.949) over apple (0.774) -> hit; with the blank dropped or embedded as
    # anything else the row could not be scored. WebQA: the text query (1,0,0) prefers red car's fused (1,0,1)/√2.
    assert result.details["per_dataset"] == {"OK-VQA": 100.0, "WebQA": 100.0}
    assert result.details["blank_candidates"] == {"OK-VQA": 2}
    assert result.details["dangling_image_tokens"] == {"WebQA": 1}


def _recorder_fixture(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    data = tmp_path / "MMEB"
    save_image(data / "eval_images" / "q.jpg", PALETTE[0])
    texts = {}
    for i, name in enumerate(names):
        _write(data, name, {
            "qry_text": [f"{P} query {name} {j}\n" for j in range(3)], "qry_img_path": ["q.jpg"] * 3,
            "tgt_text": [[f"yes {name} {j}", f"no {name} {j}", f"maybe {name} {j}"] for j in range(3)],
            "tgt_img_path": [["", "", ""]] * 3,
        })  # fmt: skip
        for j in range(3):
            texts[f"query {name} {j}"] = [1.0, 0.1 * i + 0.1 * j]
            texts[f"yes {name} {j}"] = [1.0, 0.0] if (i + j) % 2 else [0.0, 1.0]
            texts[f"no {name} {j}"] = [0.7, 0.7]
            texts[f"maybe {name} {j}"] = [0.2, 1.0]
    model = InterleavedRecorder({PALETTE[0]: [1.0, 0.0]}, texts).save_pretrained(tmp_path / "model")
    return data, model


NAMES = ["ImageNet-1K", "OK-VQA", "MSCOCO_i2t", "RefCOCO"]


def test_mmeb_resumes_per_dataset_after_an_interruption(tmp_path, monkeypatch):
    use_recorder_checkpoints(monkeypatch)
    data, model = _recorder_fixture(tmp_path, NAMES)
    base = ["mmeb", "--model", str(model), "--data", str(data), "--subsets", *NAMES]
    monkeypatch.setattr(InterleavedRecorder, "seen", [])
    assert main([*base, "--cache-dir", str(tmp_path / "fresh"), "--output", str(tmp_path / "full.json")]) == 0
    uninterrupted = EvalResult.load(tmp_path / "full.json")

    cache = str(tmp_path / "cache")
    monkeypatch.setattr(InterleavedRecorder, "crash_on", "query MSCOCO_i2t")
    with pytest.raises(Interrupted):
        main([*base, "--cache-dir", cache, "--output", str(tmp_path / "resumed.json")])
    assert not (tmp_path / "resumed.json").exists()
    monkeypatch.setattr(InterleavedRecorder, "crash_on", None)
    monkeypatch.setattr(InterleavedRecorder, "seen", [])
    assert main([*base, "--cache-dir", cache, "--output", str(tmp_path / "resumed.json")]) == 0
    resumed = EvalResult.load(tmp_path / "resumed.json")
    encoded = " ".join(text for text in InterleavedRecorder.seen if text)
    assert "ImageNet-1K" not in encoded and "OK-VQA" not in encoded  # finished: not encoded again
    assert "MSCOCO_i2t" in encoded and "RefCOCO" in encoded
    assert resumed.details["resumed"] == ["ImageNet-1K", "OK-VQA"]
    assert resumed.details["per_dataset"] == uninterrupted.details["per_dataset"]
    assert resumed.metrics == uninterrupted.metrics and resumed.ties == uninterrupted.ties
    assert set(uninterrupted.details["per_dataset"].values()) != {100.0}  # the scores tell datasets apart

    # another tie rule is another score: the stored ones are not reused for it
    monkeypatch.setattr(InterleavedRecorder, "seen", [])
    out = tmp_path / "pessimistic.json"
    assert main([*base, "--cache-dir", cache, "--output", str(out), "--ties", "pessimistic"]) == 0
    assert EvalResult.load(out).details["resumed"] == []


RUNNER = '''"""``python -m evaluate`` with the recorder test model registered (tests/evaluate_helpers.py)."""

import runpy
import sys

sys.path.insert(0, sys.argv.pop(1))
from evaluate import models  # noqa: E402

models.CHECKPOINT_LOADERS.insert(0, models.CheckpointLoader(
    name="recorder", detect=lambda d: (d / "fake_model.json").is_file(),
    load="evaluate_helpers:InterleavedRecorder", description="test model",
))
sys.argv = ["python -m evaluate", *sys.argv[1:]]
runpy.run_module("evaluate", run_name="__main__", alter_sys=True)
'''


def _torchrun(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("EVALUATE_CACHE_DIR", "WORLD_SIZE", "RANK")}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(runner), str(REPO / "tests"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


def test_mmeb_under_torchrun_resumes_per_dataset_with_the_numbers_of_one_process(tmp_path, monkeypatch):
    """A run interrupted at the third dataset, rerun under torchrun on two gloo ranks: both ranks skip the
    finished datasets and the result equals one uninterrupted process."""
    use_recorder_checkpoints(monkeypatch)
    data, model = _recorder_fixture(tmp_path, NAMES)
    base = ["mmeb", "--model", str(model), "--data", str(data), "--subsets", *NAMES, "--batch-size", "2"]
    assert main([*base, "--no-cache", "--output", str(tmp_path / "one.json")]) == 0
    one = EvalResult.load(tmp_path / "one.json")
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(InterleavedRecorder, "crash_on", "query MSCOCO_i2t")
    with pytest.raises(Interrupted):
        main([*base, "--cache-dir", cache, "--output", str(tmp_path / "two.json")])
    done = _torchrun(tmp_path, [*base, "--cache-dir", cache, "--output", "two.json"])
    assert done.returncode == 0, done.stderr[-3000:]
    two = EvalResult.load(tmp_path / "two.json")
    assert two.details["resumed"] == ["ImageNet-1K", "OK-VQA"] and two.settings["world_size"] == 2
    assert two.details["per_dataset"] == one.details["per_dataset"] and two.metrics == one.metrics


def _mmeb_result(rows: dict[str, int]) -> EvalResult:
    per_dataset = {name: 50.0 for name in rows}
    return EvalResult(
        task="mmeb",
        dataset={"name": "mmeb"},
        model={"spec": "ours"},
        metrics={"classification": 50.0, "vqa": 50.0, "IND": 50.0, "overall": 50.0},
        counts={**rows, "datasets": len(rows)},
        details={"per_dataset": per_dataset},
    )


def _cells(table: str, label: str) -> dict[str, str]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == label:
            return dict(zip(header, cells, strict=True))
    return {}


def test_published_mmeb_baselines_only_beside_complete_groups():
    phi = "VLM2Vec (Phi-3.5-V) [VLM2Vec Table 2]"
    qwen = "VLM2Vec-Qwen2VL-7B [VLM2Vec README]"
    every = {d.name: MMEB_EVAL_ROWS for d in MMEB_DATASETS}
    table = report_table([_mmeb_result(every)], references=True)
    assert _cells(table, phi)["mmeb mmeb classification"] == "54.80"
    assert (
        _cells(table, phi)["mmeb mmeb overall"] == "60.10"
        and _cells(table, qwen)["mmeb mmeb overall"] == "65.80"
    )
    assert "left out" not in table

    classification = {d.name: MMEB_EVAL_ROWS for d in MMEB_DATASETS if d.meta_task == "classification"}
    table = report_table([_mmeb_result({**classification, "OK-VQA": MMEB_EVAL_ROWS})], references=True)
    cells = _cells(table, phi)
    assert cells["mmeb mmeb classification"] == "54.80"
    assert cells["mmeb mmeb vqa"] == cells["mmeb mmeb IND"] == cells["mmeb mmeb overall"] == "–"
    assert _cells(table, qwen) == {}  # its only number (overall) is not comparable: no row
    assert "mmeb overall: 25 of its 36 datasets not scored" in table

    short = {**classification, "SUN397": 999}
    table = report_table([_mmeb_result(short)], references=True)
    assert _cells(table, phi) == {} and "mmeb classification: 1 of its 10 datasets" in table


def test_vlm2vec_options_are_refused_for_other_models(tmp_path, capsys):
    with pytest.raises(ModelSpecError, match="--base-model applies to VLM2Vec models"):
        load_model("open_clip:RN50", options={"base_model": "x", "image_size": None})
    data = _blank_fixture(tmp_path)
    args = ["mmeb", "--model", "open_clip:RN50", "--data", str(data), "--prompt-format", "ours", "--no-cache"]
    assert main(args) == 2
    assert "--prompt-format applies to VLM2Vec models" in capsys.readouterr().err
