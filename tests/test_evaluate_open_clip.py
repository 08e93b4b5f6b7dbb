"""The open_clip wrapper on a tiny random open_clip model: class weights equal open_clip's own
``build_zero_shot_classifier``; local checkpoints load; spec errors are clear."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from evaluate_helpers import PALETTE, solid_image, write_imagefolder

from core.protocol import FeatureStageModel, ImageTextModel, InterleavedModel
from evaluate import tasks
from evaluate.cache import FeatureCache, model_fingerprint
from evaluate.cli import main
from evaluate.models import ModelSpecError, OpenCLIPModel, load_model, parse_open_clip_spec
from evaluate.results import EvalResult

TINY = "evaluate-tiny-vit"


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("configs") / f"{TINY}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return TINY


def test_zero_shot_weights_equal_open_clip_build_zero_shot_classifier(tiny_arch):
    torch.manual_seed(0)
    model = load_model(f"open_clip:{tiny_arch}")
    assert isinstance(model, OpenCLIPModel) and model.config["pretrained"] is None
    classnames = ["tench", "goldfish", "great white shark"]
    templates = list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    ours = tasks.zeroshot_classifier(
        model, classnames, templates, tasks.EncodeSettings(FeatureCache(None, "x"), 50)
    )
    reference = open_clip.build_zero_shot_classifier(
        model.model, model.tokenizer, classnames, templates, num_classes_per_batch=2
    )
    assert ours.shape == (3, 16)
    torch.testing.assert_close(ours, reference.T, atol=1e-5, rtol=1e-5)


def test_encode_image_matches_open_clip_on_its_own_transform(tiny_arch):
    model = load_model(f"open_clip:{tiny_arch}")
    assert isinstance(model, OpenCLIPModel) and isinstance(model, ImageTextModel)
    assert not isinstance(model, InterleavedModel) and not isinstance(model, FeatureStageModel)
    images = [solid_image(PALETTE[0]), solid_image(PALETTE[3])]
    pixels = torch.stack([model.preprocess(im) for im in images])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(model.encode_image(images), expected)


def test_local_checkpoint_file_loads_and_changes_the_fingerprint(tiny_arch, tmp_path):
    torch.manual_seed(1)
    original = load_model(f"open_clip:{tiny_arch}")
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": original.model.state_dict()}, path)
    loaded = load_model(f"open_clip:{tiny_arch}/{path}")
    assert loaded.config["pretrained"] == str(path)
    for name, tensor in original.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    other = load_model(f"open_clip:{tiny_arch}")  # fresh random weights
    assert model_fingerprint(other) != model_fingerprint(loaded)


def test_zeroshot_cli_end_to_end_with_open_clip(tiny_arch, tmp_path):
    data = write_imagefolder(tmp_path / "data", {"n1": [PALETTE[0]], "n2": [PALETTE[1], PALETTE[2]]})
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n")
    out = tmp_path / "zs.json"
    argv = [
        "zeroshot",
        "--model",
        f"open_clip:{tiny_arch}",
        "--data",
        str(data),
        "--classnames",
        str(tmp_path / "names.txt"),
        "--output",
        str(out),
        "--no-cache",
    ]
    assert main(argv) == 0
    result = EvalResult.load(out)
    assert result.counts == {"images": 3, "classes": 2, "classes_with_images": 2, "templates": 80}
    assert 0.0 <= result.metrics["top1"] <= 100.0 and result.metrics["top5"] == 100.0
    assert result.model["config"]["arch"] == tiny_arch and result.settings["cache"] is None


def test_spec_parsing_and_clear_errors(tmp_path):
    assert parse_open_clip_spec("open_clip:ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_open_clip_spec("open_clip:ViT-B-32/ckpts/e.pt") == ("ViT-B-32", "ckpts/e.pt")
    assert parse_open_clip_spec("open_clip:hf-hub:org/name") == ("hf-hub:org/name", None)
    with pytest.raises(ModelSpecError, match="unknown open_clip architecture"):
        load_model("open_clip:NoSuchArch")
    with pytest.raises(ModelSpecError, match="neither an open_clip spec nor a directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="align: align/ checkpoint"):
        load_model(str(tmp_path))
