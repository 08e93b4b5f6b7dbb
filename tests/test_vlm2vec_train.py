"""`python -m vlm2vec.train` end to end on a tiny Qwen2-VL and a tiny MMEB-train: loss, checkpoints, exact
resume, export, and scoring through evaluate's MMEB task (trained and zero-shot)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from vlm2vec_helpers import (
    save_tiny_qwen2_vl,
    single_thread,  # noqa: F401 (autouse fixture)
    write_tiny_mmeb_eval,
    write_tiny_mmeb_train,
)

from core.checkpoint import save_checkpoint
from core.protocol import EmbedInput
from evaluate.cache import FeatureCache
from evaluate.datasets import load_mmeb
from evaluate.models import load_model
from evaluate.tasks import EncodeSettings, mmeb
from vlm2vec.model import VLM2VecModel
from vlm2vec.train import main


def _args(base, data, out, *extra):
    return [
        "--model", str(base), "--data", str(data), "--output-dir", str(out),
        "--subsets", "ImageNet_1K", "MSCOCO_t2i", "--batch-size", "4",
        "--query-chunk-size", "2", "--target-chunk-size", "3", "--lr", "5e-3", "--warmup", "0",
        "--steps", "8", "--save-every", "4", "--keep-last", "0", "--lora-r", "8", "--lora-alpha", "16",
        "--lora-dropout", "0.1", "--precision", "fp32", "--device", "cpu", "--num-workers", "0",
        "--no-progress", "--temperature", "0.05", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm2vec_train")
    base = save_tiny_qwen2_vl(root / "base", dropout=0.1)
    data = write_tiny_mmeb_train(root / "mmeb")
    out = root / "run"
    assert main(_args(base, data, out)) == 0
    return base, data, out


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_checkpoints(run):
    _, _, out = run
    records = _records(out)
    assert [r["step"] for r in records] == list(range(1, 9))
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-2:]) / 2
    assert last < first - 0.1, (first, last)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_8"]
    config = json.loads((out / "checkpoints" / "step_8" / "config.json").read_text())
    assert config["format"] == "vlm2vec-train-v1" and config["train"]["subsets"] == [
        "ImageNet_1K",
        "MSCOCO_t2i",
    ]
    assert (out / "final" / "vlm2vec_config.json").is_file()


def test_resume_is_exact(run, tmp_path):
    base, data, out = run
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_8")
    shutil.rmtree(resumed / "final")
    assert main(_args(base, data, resumed, "--resume", "latest")) == 0
    want = load_file(out / "checkpoints" / "step_8" / "model.safetensors")
    got = load_file(resumed / "checkpoints" / "step_8" / "model.safetensors")
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        assert torch.equal(want[name], got[name]), name

    def losses(path):
        return [(r["step"], r["loss"], r["lr"]) for r in _records(path)]

    assert losses(resumed) == losses(out)


def test_bad_input_fails_before_writing(run, tmp_path, caplog):
    base, data, _ = run
    assert main(_args(base, data, tmp_path / "x", "--split", "original", "--subsets", "NoSuchSubset")) == 2
    assert main(_args(base, tmp_path / "missing", tmp_path / "y")) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    _, _, out = run
    assert main(_args(base, data, out)) == 2  # holds checkpoints and no --resume
    foreign = save_checkpoint(  # an align head's checkpoint is no vlm2vec checkpoint
        tmp_path / "align_run",
        1,
        {"w": torch.zeros(1)},
        {"format": "align-head", "train": {}},
        {"step": 1},
        0,
    )
    assert main(_args(base, data, tmp_path / "z", "--resume", str(foreign))) == 2
    assert "is not a 'vlm2vec-train-v1' training checkpoint (its format is 'align-head')" in caplog.text
    assert not (tmp_path / "z").exists()


def _hand_precision_at_1(model: VLM2VecModel, subset) -> float:
    hits = 0
    for text, image, candidates in zip(
        subset.query_texts, subset.query_images, subset.target_texts, strict=True
    ):
        from PIL import Image

        query = model.encode([EmbedInput(text=text or None, image=Image.open(image).convert("RGB"))])
        targets = model.encode([EmbedInput(text=c) for c in candidates])
        scores = (query.double() @ targets.double().T)[0]
        hits += int(scores[0] > scores[1:].max())
    return 100.0 * hits / len(subset.query_texts)  # evaluate reports percentages


@pytest.mark.parametrize("which", ["trained", "checkpoint", "zero_shot"])
def test_scores_through_evaluate_mmeb(run, tmp_path, which):
    base, _, out = run
    spec = {"trained": out, "checkpoint": out / "checkpoints" / "step_8", "zero_shot": base}[which]
    model = load_model(str(spec))
    assert isinstance(model, VLM2VecModel)
    assert (model.config.lora is None) == (which == "zero_shot")
    subsets = load_mmeb(write_tiny_mmeb_eval(tmp_path / "eval"), ["VOC2007"])
    result = mmeb(model, subsets, EncodeSettings(cache=FeatureCache(None, "test"), batch_size=3))
    assert result.details["per_dataset"]["VOC2007"] == pytest.approx(_hand_precision_at_1(model, subsets[0]))
