"""A real alignment run on real features of the sample data (coco-mini; efficientnet-lite0 + all-MiniLM-L6-v2).

Features are computed by ``encode``'s pipeline in this process (both offline models, loaded once), the head is
trained by ``align.train`` on the 80 train images and scored on the 79 held-out val images, and the trained
model reloads through ``AlignedModel`` (backbones named by the checkpoint) to embed raw images and captions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from align import AlignedModel, AlignmentHead
from align.config import TrainConfig
from align.data import load_eval_data
from align.train import head_config, retrieval_metrics, train
from core.checkpoint import latest_checkpoint
from encode.backbones import load_image_backbone, load_text_backbone
from encode.inputs import load_rows
from encode.pipeline import EncodeOptions, encode_images, encode_texts
from encode.store import FeatureStore

COCO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco-mini"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    if not COCO.is_dir():
        pytest.fail(f"sample data missing at {COCO} (../shared/data relative to the repository root)")
    out = tmp_path_factory.mktemp("coco_features")
    image_backbone = load_image_backbone("efficientnet-lite0")
    text_backbone = load_text_backbone("all-MiniLM-L6-v2")
    options = EncodeOptions(batch_size=64, num_workers=0, progress=False)
    paths = {}
    for split in ("train", "val"):
        rows = load_rows(
            COCO / "annotations" / f"captions_{split}2017.json",
            COCO / f"{split}2017",
            caption_columns=["caption"],
        )
        paths[f"{split}_image"] = out / f"{split}_image.h5"
        paths[f"{split}_text"] = out / f"{split}_text.h5"
        encode_images(rows, image_backbone, paths[f"{split}_image"], options=options)
        encode_texts(rows, text_backbone, paths[f"{split}_text"], caption_column="caption", options=options)
    return paths


def test_trained_head_beats_untrained_by_far_and_reloads(features, tmp_path):
    cfg = TrainConfig(
        image_features=str(features["train_image"]),
        text_features=[str(features["train_text"])],
        val_image_features=str(features["val_image"]),
        val_text_features=[str(features["val_text"])],
        output_dir=str(tmp_path / "run"),
        head="linear",
        target_dim=256,
        loss="siglip",
        batch_size=200,
        optimizer="adamw",
        lr=1e-3,
        wd=0.01,
        epochs=30,
        logit_scale=10.0,
        precision="fp32",
        log_every=20,
        progress=False,
    )
    trained = train(cfg)
    val = load_eval_data(features["val_image"], [features["val_text"]])
    assert val.image.shape == (79, 1280) and val.text.shape == (395, 384)
    torch.manual_seed(cfg.seed)
    untrained = retrieval_metrics(AlignmentHead(head_config(cfg, 1280, 384)), val, torch.device("cpu"))
    for direction in ("i2t", "t2i"):
        assert untrained[f"val/{direction}_R@5"] < 20  # about chance (5/79 images, 25/395 captions)
        assert trained[f"val/{direction}_R@1"] > untrained[f"val/{direction}_R@1"] + 15
        assert trained[f"val/{direction}_R@5"] > untrained[f"val/{direction}_R@5"] + 35

    checkpoint = latest_checkpoint(cfg.output_dir)
    model = AlignedModel.from_pretrained(checkpoint)
    assert model.config["image_backbone"]["model"] == "efficientnet-lite0"
    with FeatureStore(features["val_image"]) as images, FeatureStore(features["val_text"]) as texts:
        files = [COCO / "val2017" / f"{int(k):012d}.jpg" for k in images.keys[:2]]
        pil = [Image.open(f).convert("RGB") for f in files]
        from_pixels = model.encode_image(pil)
        from_store = model.encode_image_features(torch.from_numpy(images.read(0, 2)))
        captions = load_rows(COCO / "annotations" / "captions_val2017.json", COCO / "val2017",
                             caption_columns=["caption"]).caption_rows("caption").texts[:3]  # fmt: skip
        from_text = model.encode_text(list(captions))
        from_text_store = model.encode_text_features(torch.from_numpy(texts.read(0, 3)))
    assert from_pixels.shape == (2, 256)
    torch.testing.assert_close(from_pixels.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(from_pixels, from_store, atol=2e-2, rtol=0)  # stores hold float16 features
    torch.testing.assert_close(from_text, from_text_store, atol=2e-2, rtol=0)

    export = model.save_pretrained(tmp_path / "export")
    again = AlignedModel.from_pretrained(export)
    torch.testing.assert_close(again.encode_image_features(torch.from_numpy(val.image.numpy()[:4])),
                               model.encode_image_features(val.image[:4]))  # fmt: skip
