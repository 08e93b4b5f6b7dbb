"""The quickstart: its data split, its chance levels, and the whole pipeline on a small slice of the sample data."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from evaluate.results import EvalResult
from quickstart.prepare import CAPTION_COLUMNS, SplitConfig, prepare
from quickstart.report import chance_level, image_to_text_chance

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT.parent / "shared" / "data"


def test_image_to_text_chance_matches_enumeration():
    """Exact expectation of a random ranking, checked by enumerating every ranking of a tiny case."""
    n_captions, positives = 5, 2
    for k in (1, 2, 3):
        hits = [bool(set(order[:k]) & {0, 1}) for order in itertools.permutations(range(n_captions))]
        expected = 100.0 * sum(hits) / len(hits)
        assert image_to_text_chance([positives], n_captions, k) == pytest.approx(expected)
    # COCO-like: 5 positives among 395 captions, R@1 = 5/395
    assert image_to_text_chance([5], 395, 1) == pytest.approx(100 * 5 / 395)


def test_chance_levels_from_result_counts():
    retrieval = EvalResult(
        "retrieval", {}, {}, {}, {"images": 4, "captions": 10}, details={"captions_per_image": [1, 2, 3, 4]}
    )
    assert chance_level(retrieval, "t2i_R@1") == pytest.approx(25.0)
    assert chance_level(retrieval, "t2i_R@10") == pytest.approx(100.0)
    assert chance_level(retrieval, "i2t_R@1") == pytest.approx(100 * (1 + 2 + 3 + 4) / 10 / 4)
    zeroshot = EvalResult("zeroshot", {}, {}, {}, {"classes": 250})
    assert chance_level(zeroshot, "top5") == pytest.approx(2.0)


def test_prepare_splits_classes_and_holds_out_validation(tmp_path):
    layout = prepare(
        tmp_path, SplitConfig(str(DATA_ROOT), val_images=4, limit_classes=10, limit_coco_images=12)
    )
    train = pd.read_csv(layout.train_manifest)
    val = pd.read_csv(layout.val_manifest)
    split = json.loads(layout.split.read_text())
    seen, unseen = set(split["seen_classes"]), set(split["unseen_classes"])
    assert len(seen) == len(unseen) == 5 and not seen & unseen
    assert len(val) == 4 and not set(val.key) & set(train.key)
    imagenet = train[train.key.str.startswith("imagenet/")]
    assert {key.split("/")[1] for key in imagenet.key} == seen  # unseen classes never reach training
    assert imagenet[list(CAPTION_COLUMNS)].notna().all().all()
    assert (train.key.str.startswith("coco/")).sum() == 8
    assert all((DATA_ROOT / path).is_file() for path in train.image)
    folders = {p.name for p in (layout.unseen_imagefolder / "val").iterdir()}
    assert folders == unseen
    assert layout.unseen_classes.read_text().split() == sorted(unseen, key=split_order(layout))
    assert len(layout.unseen_classnames.read_text().splitlines()) == 5


def split_order(layout):
    wnids = (layout.unseen_imagefolder / "wnids.txt").read_text().split()
    return wnids.index


def test_prepare_rejects_a_validation_carve_that_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="--val-images"):
        prepare(tmp_path, SplitConfig(str(DATA_ROOT), val_images=12, limit_coco_images=12))


@pytest.mark.slow
def test_quickstart_script_end_to_end_on_a_slice(tmp_path):
    """The README's main job on a small slice: every artefact exists and training beats the untrained head."""
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na bad photo of a {}.\n")
    env = os.environ | {
        "OUTPUT_DIR": str(tmp_path / "qs"),
        "LIMIT_CLASSES": "12",
        "LIMIT_COCO_IMAGES": "40",
        "VAL_IMAGES": "4",
        "EPOCHS": "10",
        "BATCH_SIZE": "64",
        "ZEROSHOT_TEMPLATES": str(templates),
        "NUM_WORKERS": "0",
    }
    proc = subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "qs"
    for name in ("results.json", "report.md", "retrieval.png", "zeroshot_unseen.png", "run/loss_curve.png"):
        assert (out / name).is_file(), name
    assert "| metric (%) | trained head | untrained head | chance |" in proc.stdout
    rows = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for direction in ("image→text", "text→image"):
        r1 = rows[f"COCO-MINI val  {direction} R@1"]
        assert r1["trained"] > 3 * r1["untrained"] and r1["trained"] > 5 * r1["chance"]
    # a second run reuses the complete feature stores
    again = subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0 and again.stdout.count("was already complete") == 12
