"""The open_clip-style factory and the CLIP_benchmark ``align`` model type on a real checkpoint (a random head over
the offline backbones): open_clip's conventions hold, and CLIP_benchmark's own zero-shot and retrieval code,
through its Python API and its CLI, gives our evaluator's numbers on slices of the sample data."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification
from clip_benchmark.models import MODEL_TYPES, load_clip
from integration_helpers import COCO, IMAGENET, coco_slice, imagenet_slice, random_head_checkpoint
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from align import create_model_and_transforms
from align.clip_benchmark import main as clip_benchmark_main
from align.clip_benchmark import register
from align.factory import AlignedCLIP, CheckpointError, TextTokens
from evaluate import tasks
from evaluate.cache import FeatureCache
from evaluate.datasets import load_imagefolder, load_retrieval

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_head_checkpoint(tmp_path_factory.mktemp("align_ckpt"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model, transform, tokenizer) through CLIP_benchmark's own ``load_clip`` with the registered type."""
    register()
    assert "align" in MODEL_TYPES
    return load_clip("align", str(checkpoint), "latest", cache_dir=None, device="cpu")


def _settings() -> tasks.EncodeSettings:
    return tasks.EncodeSettings(FeatureCache(None, "integration"), batch_size=32)


def test_open_clip_conventions(loaded, checkpoint):
    model, preprocess, tokenizer = loaded
    assert isinstance(model, AlignedCLIP) and not model.training
    files = sorted((COCO / "val2017").iterdir())[:3]
    images = [Image.open(f) for f in files]
    pixels = torch.stack([preprocess(im) for im in images])
    texts = ["a dog on a skateboard", "two plates of food"]
    tokens = tokenizer(texts)
    assert isinstance(tokens, TextTokens) and tokens.to("cpu") is tokens and list(tokens) == texts
    image_features = model.encode_image(pixels)  # open_clip's default: not normalised
    text_features = model.encode_text(tokens)
    torch.testing.assert_close(image_features, model.aligned.encode_image(images, normalize=False))
    torch.testing.assert_close(text_features, model.aligned.encode_text(texts, normalize=False))
    assert not torch.allclose(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(
        model.encode_image(pixels, normalize=True), F.normalize(image_features, dim=-1)
    )

    image_out, text_out, scale, bias = model(pixels, tokens)  # a sigmoid-loss head also returns its bias
    torch.testing.assert_close(image_out, F.normalize(image_features, dim=-1))
    torch.testing.assert_close(text_out, F.normalize(text_features, dim=-1))
    torch.testing.assert_close(scale, torch.tensor(model.aligned.logit_scale))
    torch.testing.assert_close(bias, torch.tensor(model.aligned.logit_bias))
    image_logits, text_logits = model.get_logits(pixels, tokens)
    torch.testing.assert_close(image_logits, scale * image_out @ text_out.T + bias)
    torch.testing.assert_close(text_logits, image_logits.T)

    with pytest.raises(TypeError, match="not open_clip's"):
        tokenizer([images[0]])  # e.g. `model, _, preprocess = ...` unpacked the open_clip way
    with pytest.raises(TypeError, match="pixel batch"):
        model.encode_image(images)
    with pytest.raises(CheckpointError, match="not a folder"):
        create_model_and_transforms(checkpoint / "missing")
    with pytest.raises(CheckpointError, match="--pretrained"):
        load_clip("align", str(checkpoint), "laion400m_e32", cache_dir=None, device="cpu")


def test_clip_benchmark_zeroshot_equals_our_evaluator(loaded, tmp_path):
    model, transform, tokenizer = loaded
    root, wnids = imagenet_slice(tmp_path / "imagenet", n_classes=8)
    package = resources.files("clip_benchmark.datasets")
    all_names = json.loads((package / "en_classnames.json").read_text())["imagenet1k"]
    index = {w: i for i, w in enumerate((IMAGENET / "wnids.txt").read_text().split())}  # ImageNet class index
    classnames = [all_names[index[w]] for w in wnids]
    all_templates = json.loads((package / "en_zeroshot_classification_templates.json").read_text())
    templates = all_templates["imagenet1k"][:3]

    dataset = ImageFolder(str(root), transform=transform)
    loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=0)
    # clip_benchmark's own classifier and logits; its accuracy() fails under NumPy >= 2.4 (float() of a 1-element
    # array), so top-k and mean per-class recall are scored from its logits with scikit-learn, as its evaluate does
    reference_weights = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, classnames, templates, device="cpu", amp=False
    )
    logits, target = zeroshot_classification.run_classification(
        model, reference_weights, loader, device="cpu", amp=False
    )
    labels = list(range(len(classnames)))
    theirs = {
        "acc1": top_k_accuracy_score(target, logits, k=1, labels=labels),
        "acc5": top_k_accuracy_score(target, logits, k=5, labels=labels),
        "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(dim=1)),
    }

    data = load_imagefolder(root, split=None)
    assert [data.classes[i] for i in sorted(set(data.labels))] == wnids
    ours_templates = [lambda c, t=t: t.format(c=c) for t in templates]
    weights = tasks.zeroshot_classifier(model.aligned, classnames, ours_templates, _settings())
    torch.testing.assert_close(weights, reference_weights.T, atol=1e-5, rtol=1e-5)
    ours = tasks.zeroshot(model.aligned, data, classnames, ours_templates, _settings())
    assert all(count == 0 for count in ours.ties["tied"].values())  # tie-free: every tie rule agrees
    assert ours.metrics["top1"] == pytest.approx(100 * theirs["acc1"], abs=1e-9)
    assert ours.metrics["top5"] == pytest.approx(100 * theirs["acc5"], abs=1e-9)
    assert ours.metrics["mean_per_class_recall"] == pytest.approx(
        100 * theirs["mean_per_class_recall"], abs=1e-9
    )
    assert theirs["acc5"] > 0  # the comparison is not of zeros only


def test_clip_benchmark_cli_retrieval_equals_our_evaluator(loaded, checkpoint, tmp_path):
    model = loaded[0]
    annotations, images = coco_slice(tmp_path / "coco", n_images=10)
    root = tmp_path / "coco_root"
    root.mkdir()
    (root / "val2014").symlink_to(images)  # where clip_benchmark's mscoco_captions looks for the val images
    out = tmp_path / "result.json"
    argv = ["eval", "--model_type", "align", "--model", str(checkpoint), "--pretrained", "latest"]
    argv += ["--dataset", "mscoco_captions", "--dataset_root", str(root), "--split", "val"]
    argv += ["--annotation_file", str(annotations), "--recall_k", "1", "5", "10", "--no_amp"]
    argv += ["--batch_size", "16", "--num_workers", "0", "--output", str(out), "--quiet"]
    assert clip_benchmark_main(argv) == 0
    theirs = json.loads(out.read_text())["metrics"]

    data = load_retrieval(annotations, image_root=images)
    assert len(data.images) == 10 and len(data.captions) >= 10 * 5
    ours = tasks.retrieval(model.aligned, data, _settings())
    assert all(count == 0 for count in ours.ties["tied"].values())
    for k in (1, 5, 10):
        assert ours.metrics[f"t2i_R@{k}"] == pytest.approx(
            100 * theirs[f"image_retrieval_recall@{k}"], abs=1e-4
        )
        assert ours.metrics[f"i2t_R@{k}"] == pytest.approx(
            100 * theirs[f"text_retrieval_recall@{k}"], abs=1e-4
        )
    assert theirs["image_retrieval_recall@10"] > 0
