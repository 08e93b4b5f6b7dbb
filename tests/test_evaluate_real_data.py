"""Real data, end to end: encode COCO-mini train2017 with the packaged EfficientNet-Lite0 and all-MiniLM-L6-v2,
train an align/ head on it, then score that run with the evaluator on the held-out COCO-mini val2017 captions
(retrieval) and on the ImageNet sample (zero-shot among all 1000 classes). Both must beat chance widely.

Slow (several minutes on 2 shared CPU cores; most of it is the backbones reading 659 images), CPU-only, offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluate.cli import main as evaluate_main
from evaluate.results import EvalResult

DATA = Path("../shared/data")  # relative to the repository root, where the tests run
COCO = DATA / "coco-mini"
IMAGENET = DATA / "imagenet-sample"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not COCO.is_dir() or not IMAGENET.is_dir(), reason="needs ../shared/data (run from repo root)"
    ),
]


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory) -> Path:
    from align.train import main as train_main
    from encode.__main__ import main as encode_main

    work = tmp_path_factory.mktemp("real")
    captions = str(COCO / "annotations" / "captions_train2017.json")
    assert encode_main(["image", "--model", "efficientnet-lite0", "--data", captions, "--out",
                        str(work / "img.h5"), "--device", "cpu", "--num-workers", "0"]) == 0  # fmt: skip
    assert encode_main(["text", "--model", "all-MiniLM-L6-v2", "--data", captions, "--caption-column", "caption",
                        "--out", str(work / "txt.h5"), "--device", "cpu"]) == 0  # fmt: skip
    run = work / "run"
    assert train_main([
        "--image-features", str(work / "img.h5"), "--text-features", str(work / "txt.h5"),
        "--head", "linear", "--target-dim", "256", "--batch-size", "200", "--epochs", "30", "--lr", "1e-3",
        "--optimizer", "adamw", "--wd", "0.01", "--warmup", "0.1", "--logit-scale", "10", "--seed", "0",
        "--output-dir", str(run), "--no-progress", "--device", "cpu",
    ]) == 0  # fmt: skip
    return run


def _evaluate(tmp_path: Path, *argv: str) -> EvalResult:
    out = tmp_path / "result.json"
    assert evaluate_main([*argv, "--output", str(out), "--no-cache", "--batch-size", "100"]) == 0
    return EvalResult.load(out)


def test_retrieval_on_coco_mini_val_beats_chance_widely(aligned_run, tmp_path):
    result = _evaluate(tmp_path, "retrieval", "--model", str(aligned_run), "--data", str(COCO))
    assert result.counts == {"images": 79, "captions": 395}
    # chance R@1: i2t 5 positives among 395 captions, t2i 1 image among 79 -> both ~1.3 %
    assert result.metrics["i2t_R@1"] > 10 * 100 * 5 / 395
    assert result.metrics["t2i_R@1"] > 10 * 100 / 79
    assert result.model["config"]["image_backbone"]["model"] == "efficientnet-lite0"


def test_zeroshot_on_imagenet_sample_beats_chance_widely(aligned_run, tmp_path):
    # One template keeps the 1000 class prompts cheap on CPU; the default is open_clip's 80.
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    result = _evaluate(tmp_path, "zeroshot", "--model", str(aligned_run), "--data", str(IMAGENET),
                       "--templates", str(tmp_path / "templates.txt"))  # fmt: skip
    assert result.counts == {"images": 500, "classes": 1000, "classes_with_images": 500, "templates": 1}
    assert result.dataset["name"] == "imagenet-sample"
    # chance among 1000 classes: top-1 0.1 %, top-5 0.5 %
    assert result.metrics["top1"] > 5 * 0.1 and result.metrics["top5"] > 5 * 0.5
