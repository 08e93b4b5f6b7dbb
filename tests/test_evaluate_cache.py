"""Feature cache: the same model reuses features; changed weights, config or data never do; safetensors only."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from evaluate_helpers import PALETTE, FakeModel, write_coco_captions
from safetensors.torch import load_file

from evaluate import tasks
from evaluate.cache import FeatureCache, hash_state_dict, model_config, model_fingerprint
from evaluate.datasets import load_retrieval

IMAGES = PALETTE[:3]
CAPTIONS = [(0, "red"), (1, "green"), (2, "blue")]
VECTORS = {PALETTE[0]: [1, 0, 0], PALETTE[1]: [0, 1, 0], PALETTE[2]: [0, 0, 1]}
TEXTS = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}


def _score(model, data, cache_dir):
    enc = tasks.EncodeSettings(FeatureCache(cache_dir, model_fingerprint(model)), batch_size=2)
    return tasks.retrieval(model, data, enc).metrics, enc.cache


@pytest.fixture
def coco(tmp_path):
    write_coco_captions(tmp_path / "coco", "val2017", IMAGES, CAPTIONS)
    return load_retrieval(tmp_path / "coco")


def test_same_model_reuses_cached_features(tmp_path, coco):
    first, cache = _score(FakeModel(VECTORS, TEXTS), coco, tmp_path / "cache")
    assert (cache.hits, cache.misses) == (0, 2)
    files = sorted((tmp_path / "cache").rglob("*"))
    stored = [f for f in files if f.is_file()]
    assert len(stored) == 2 and all(f.suffix == ".safetensors" for f in stored)
    assert load_file(str(stored[0]))["features"].shape == (3, 3)
    again = FakeModel(VECTORS, TEXTS)  # a fresh instance with identical config and weights
    second, cache = _score(again, coco, tmp_path / "cache")
    assert second == first and (cache.hits, cache.misses) == (2, 0)
    assert again.image_calls == 0 and again.text_calls == 0


def test_changed_weights_or_config_never_reuse_features(tmp_path, coco):
    base, _ = _score(FakeModel(VECTORS, TEXTS), coco, tmp_path / "cache")
    assert base["i2t_R@1"] == 100.0
    swapped = VECTORS | {PALETTE[0]: [0, 1, 0], PALETTE[1]: [1, 0, 0]}  # a "new head": red and green swap
    changed = FakeModel(swapped, TEXTS)
    metrics, cache = _score(changed, coco, tmp_path / "cache")
    # the fingerprint covers the whole model, so even the unchanged text tower is encoded again
    assert (cache.hits, cache.misses) == (0, 2) and changed.image_calls > 0
    assert model_fingerprint(changed) != model_fingerprint(FakeModel(VECTORS, TEXTS))
    assert metrics["i2t_R@1"] == pytest.approx(100 / 3)
    new_config = FakeModel(VECTORS, TEXTS, version=1)
    _, cache = _score(new_config, coco, tmp_path / "cache")
    assert cache.misses == 2 and new_config.image_calls > 0


def test_changed_image_file_is_encoded_again(tmp_path, coco):
    _score(FakeModel(VECTORS, TEXTS), coco, tmp_path / "cache")
    image = coco.images[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    _, cache = _score(FakeModel(VECTORS, TEXTS), coco, tmp_path / "cache")
    assert (cache.hits, cache.misses) == (1, 1)  # captions reused, images re-encoded


def test_no_cache_dir_always_encodes(tmp_path, coco):
    model = FakeModel(VECTORS, TEXTS)
    _score(model, coco, None)
    _score(model, coco, None)
    assert model.image_calls == 4  # 3 images in batches of 2, twice
    assert not (tmp_path / "cache").exists()


def test_fingerprint_of_a_module_covers_every_weight():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    before = model_fingerprint(net)
    assert model_fingerprint(net) == before
    with torch.no_grad():
        net[0].weight[1, 2] += 1e-3  # a backbone-side change
    assert model_fingerprint(net) != before
    assert hash_state_dict({"a": torch.zeros(2)}) != hash_state_dict(
        {"a": torch.zeros(2, dtype=torch.float16)}
    )
    with pytest.raises(ValueError, match="cannot fingerprint"):
        model_fingerprint(object())


def _align_checkpoint(directory, seed: int, image_revision: str = "r1"):
    import dataclasses

    from align import AlignedModel, AlignmentHead, HeadConfig

    torch.manual_seed(seed)
    head_config = HeadConfig(head="linear", image_dim=8, text_dim=6, target_dim=4)
    config = {
        "head": dataclasses.asdict(head_config),
        "image_backbone": {
            "model": "efficientnet-lite0",
            "revision": image_revision,
            "pooling": "avg",
            "dim": 8,
        },
        "text_backbone": {"model": "all-MiniLM-L6-v2", "revision": "r1", "pooling": "mean", "dim": 6},
    }
    return AlignedModel(AlignmentHead(head_config), config).save_pretrained(directory)


def _training_checkpoint(directory, seed: int):
    """An align export plus the trainer state a training run's ``checkpoints/step_N`` holds (complete)."""
    path = _align_checkpoint(directory, seed)
    torch.save({}, path / "trainer_state.pt")
    return path


def test_align_runs_resolve_to_the_latest_step_and_head_or_backbone_changes_change_the_fingerprint(tmp_path):
    from align import AlignedModel
    from evaluate.models import load_model

    old = _training_checkpoint(tmp_path / "run" / "checkpoints" / "step_5", seed=0)
    new = _training_checkpoint(tmp_path / "run" / "checkpoints" / "step_10", seed=1)
    model = load_model(str(tmp_path / "run"))  # a training output dir -> its newest checkpoint
    assert isinstance(model, AlignedModel)
    assert model_fingerprint(model) == model_fingerprint(load_model(str(new)))
    assert model_fingerprint(model) != model_fingerprint(load_model(str(old)))  # another head
    other_backbone = _align_checkpoint(tmp_path / "other", seed=1, image_revision="r2")
    assert model_fingerprint(load_model(str(other_backbone))) != model_fingerprint(model)


def test_aligned_model_is_a_module_of_its_head_only_and_follows_the_protocols(tmp_path):
    from align import AlignedModel
    from core.protocol import FeatureStageModel, ImageTextModel, InterleavedModel

    model = AlignedModel.from_pretrained(_align_checkpoint(tmp_path / "step_1", seed=0))
    assert isinstance(model, torch.nn.Module) and not model.training and not model.head.training
    assert isinstance(model, ImageTextModel) and isinstance(model, FeatureStageModel)
    assert not isinstance(model, InterleavedModel)
    assert [name for name, _ in model.named_children()] == ["head"]
    state = model.state_dict()
    head_state = {f"head.{name}": value for name, value in model.head.state_dict().items()}
    assert list(state) == list(head_state) and all(torch.equal(state[k], head_state[k]) for k in head_state)
    # the fingerprint hashes the config and exactly the head's weights under "head."
    payload = json.dumps(model_config(model), sort_keys=True) + "|" + hash_state_dict(head_state)
    assert model_fingerprint(model) == hashlib.sha256(payload.encode()).hexdigest()[:32]
    assert model.to("meta").device == torch.device("meta") and model.head.logit_bias.is_meta
    assert not model.training


def test_aligned_model_follows_its_head_dtype_and_device(tmp_path):
    from align import AlignedModel

    model = AlignedModel.from_pretrained(_align_checkpoint(tmp_path / "step_1", seed=0))
    features = torch.randn(3, 8)
    expected = model.encode_image_features(features)
    model.double()
    assert model.device == torch.device("cpu") and model.head.logit_bias.dtype == torch.float64
    got = model.encode_image_features(features)
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    torch.testing.assert_close(got, expected)
    assert model.encode_text_features(torch.randn(2, 6), normalize=False).shape == (2, 4)


def test_aligned_model_loads_its_backbone_once_per_device(tmp_path, monkeypatch):
    import sys
    import types

    from align import AlignedModel

    loads = []
    registry = types.ModuleType("encode.backbones")
    registry.load_image_backbone = lambda name, **kwargs: loads.append(kwargs["device"]) or name
    monkeypatch.setitem(sys.modules, "encode.backbones", registry)
    model = AlignedModel.from_pretrained(_align_checkpoint(tmp_path / "step_1", seed=0))
    assert model.image_backbone == "efficientnet-lite0" and model.image_backbone == "efficientnet-lite0"
    assert loads == [torch.device("cpu")]
    model.to("meta")  # a device change reloads the backbone onto the new device
    assert model.image_backbone == "efficientnet-lite0"
    assert loads == [torch.device("cpu"), torch.device("meta")]


def test_load_model_rejects_a_loader_whose_class_follows_no_protocol(tmp_path, monkeypatch):
    from evaluate import models

    loader = models.CheckpointLoader(
        name="broken",
        detect=lambda d: (d / "broken").is_file(),
        load="evaluate_helpers:NotAModel",
        description="test loader",
    )
    monkeypatch.setattr(models, "CHECKPOINT_LOADERS", [loader, *models.CHECKPOINT_LOADERS])
    (tmp_path / "broken").write_text("")
    with pytest.raises(models.ModelSpecError, match="NotAModel, which has neither"):
        models.load_model(str(tmp_path))


class StagedModel(FakeModel):
    """A fake two-stage model: the FakeModel's vectors are the 'backbone', a linear map on images the 'head'."""

    def __init__(self, head: torch.Tensor, backbone_version: int = 0) -> None:
        super().__init__(VECTORS, TEXTS)
        self.head = head
        self.backbone_version = backbone_version
        self.backbone_calls = {"image": 0, "text": 0}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"head": self.head}

    def backbone_fingerprint(self, modality: str) -> str:
        return f"{modality}-fake-backbone-v{self.backbone_version}"

    def encode_image_backbone(self, images):
        self.backbone_calls["image"] += 1
        return super().encode_image(images, normalize=False)

    def encode_text_backbone(self, texts):
        self.backbone_calls["text"] += 1
        return super().encode_text(texts, normalize=False)

    def encode_image_features(self, features, normalize=True):
        return torch.nn.functional.normalize(features @ self.head, dim=-1)

    def encode_text_features(self, features, normalize=True):
        return torch.nn.functional.normalize(features, dim=-1)

    def encode_image(self, images, normalize=True):
        return self.encode_image_features(self.encode_image_backbone(images))

    def encode_text(self, texts, normalize=True):
        return self.encode_text_features(self.encode_text_backbone(texts))


def test_models_sharing_a_backbone_encode_the_data_once(tmp_path, coco):
    """Trained vs untrained head: the backbone runs once; each head is applied; results match no caching."""
    permute = torch.eye(3)[[1, 0, 2]]
    first = StagedModel(torch.eye(3))
    metrics_a, cache = _score(first, coco, tmp_path / "cache")
    assert first.backbone_calls == {"image": 2, "text": 2} and cache.misses == 2  # 3 items, batch 2
    second = StagedModel(permute)  # another head over the same backbone
    metrics_b, cache = _score(second, coco, tmp_path / "cache")
    assert second.backbone_calls == {"image": 0, "text": 0} and cache.hits == 2
    uncached = StagedModel(permute)
    enc = tasks.EncodeSettings(FeatureCache(None, model_fingerprint(uncached)), batch_size=2)
    assert tasks.retrieval(uncached, coco, enc).metrics == metrics_b
    assert metrics_a["i2t_R@1"] == 100.0 and metrics_b["i2t_R@1"] == pytest.approx(100 / 3)
    new_backbone = StagedModel(torch.eye(3), backbone_version=1)
    _score(new_backbone, coco, tmp_path / "cache")
    assert new_backbone.backbone_calls == {"image": 2, "text": 2}
