"""Five VLM families (Qwen2-VL, Qwen2.5-VL, LLaVA-Next, Idefics3, SmolVLM), tiny and random: forward, prompts,
pooling under any padding (alone vs batched, left vs right; batches mix image rows with text-only rows)."""

from __future__ import annotations

import json

import pytest
import torch
from vlm2vec_helpers import (
    IDEFICS3_IMAGE_SEQ_LEN,
    TINY_VLMS,
    color_image,
    single_thread,  # noqa: F401 (autouse fixture)
)

from core.protocol import EmbedInput
from vlm2vec.adapters import get_family
from vlm2vec.model import VLM2VecModel
from vlm2vec.pooling import last_token_index, pool


@pytest.fixture(scope="module", params=sorted(TINY_VLMS))
def base_dir(request, tmp_path_factory):
    return TINY_VLMS[request.param](tmp_path_factory.mktemp(request.param) / "base")


def _rows() -> list[EmbedInput]:
    return [
        EmbedInput(text="a cat photo", image=color_image((255, 0, 0)), instruction="find the caption"),
        EmbedInput(text="the dog"),
        EmbedInput(image=color_image((0, 0, 255), seed=1), instruction="represent the given image"),
        EmbedInput(text="<|image_1|> what color is this ?", image=color_image((0, 255, 0), seed=2)),
    ]


def test_pool_hand_made():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [1, 3]
    assert last_token_index(left).tolist() == [3, 3]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    ids = torch.tensor([[5, 9, 9, 0], [9, 5, 6, 7]])
    assert pool(hidden, right, "eos", ids, eos_token_id=9).flatten().tolist() == [1.0, 4.0]


@pytest.mark.parametrize("pooling", ["last", "eos", "mean"])
def test_embedding_independent_of_padding_side_and_batch(base_dir, pooling):
    """Each row's embedding is the same alone (no padding), batched with left padding, and with right padding."""
    rows = _rows()
    left = VLM2VecModel.from_backbone(str(base_dir), pooling=pooling, padding_side="left")
    right = VLM2VecModel.from_backbone(str(base_dir), pooling=pooling, padding_side="right")
    assert left.processor.tokenizer.padding_side == "left"
    alone = torch.cat([left.encode([row]) for row in rows])
    torch.testing.assert_close(left.encode(rows), alone, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(right.encode(rows), alone, atol=2e-5, rtol=1e-4)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(len(rows)))
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)


def test_prompt_uses_family_image_token(base_dir):
    model = VLM2VecModel.from_backbone(str(base_dir))
    family = get_family(model.config.family)
    prompt = model.preparer.prompt("<|image_1|> what color is this ?", None, has_image=True)
    assert "<|image_1|>" not in prompt and prompt.startswith(family.image_prompt)
    assert model.preparer.prompt("the dog", "find", has_image=False) == "find the dog"
    with pytest.raises(ValueError, match="has no image"):
        model.preparer.prompt("<|image_1|> x", None, has_image=False)


@pytest.mark.parametrize("base_dir", ["idefics3", "smolvlm"], indirect=True)
def test_idefics3_prompt_expands_image_tokens(base_dir):
    """The `<image>` of the prompt reaches the model as `image_seq_len` image-token ids (inside the processor's
    `<fake_token_around_image>` markers) and the pixels change the embedding; a text-only row has none."""
    model = VLM2VecModel.from_backbone(str(base_dir))
    tokenizer = model.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert model.backbone.config.image_token_id == image_id
    assert model.processor.image_seq_len == IDEFICS3_IMAGE_SEQ_LEN
    red = EmbedInput(text="<|image_1|> what color is this ?", image=color_image((255, 0, 0)))
    blue = EmbedInput(text="<|image_1|> what color is this ?", image=color_image((0, 0, 255), seed=1))
    text_only = EmbedInput(text="what color is the sky ?")
    batch = model.prepare([text_only, red])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids == image_id).sum(-1).tolist() == [0, IDEFICS3_IMAGE_SEQ_LEN]
    tokens = [
        tokenizer.convert_ids_to_tokens(row[keep.bool()].tolist())
        for row, keep in zip(ids, mask, strict=True)
    ]
    assert tokens[0] == tokenizer.tokenize("what color is the sky ?")
    image_run = ["<fake_token_around_image>", "<global-img>", *["<image>"] * IDEFICS3_IMAGE_SEQ_LEN]
    assert tokens[1] == [*image_run, "<fake_token_around_image>", *tokenizer.tokenize("what color is this ?")]
    assert "pixel_values" not in model.prepare([text_only])
    embeddings = model.encode([red, blue])
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-3)


def test_prompt_format_recorded_and_old_folders_are_ours(tmp_path):
    """Our saves record the prompt format; a folder saved before the field existed loads as ``ours``; a plain
    folder we did not write is prompted in the ``reference`` format."""
    base = TINY_VLMS["qwen2_vl"](tmp_path / "base")
    assert VLM2VecModel.from_pretrained(base).config.prompt_format == "reference"
    model = VLM2VecModel.from_backbone(str(base))
    assert model.config.prompt_format == "ours"
    saved = model.save_pretrained(tmp_path / "export")
    config = json.loads((saved / "vlm2vec_config.json").read_text())
    assert config["prompt_format"] == "ours"
    del config["prompt_format"], config["image_size"], config["num_crops"]
    del config["min_pixels"], config["max_pixels"]
    (saved / "vlm2vec_config.json").write_text(json.dumps(config))
    old = VLM2VecModel.from_pretrained(saved)
    assert old.config.prompt_format == "ours" and old.preparer.prompt_format == "ours"
    assert VLM2VecModel.from_pretrained(saved, prompt_format="reference").config.prompt_format == "reference"


def test_image_settings_reach_the_processor(tmp_path):
    """`max_pixels` bounds Qwen2-VL's image grid; `image_size` resizes first; options a family's processor does
    not have are refused."""
    base = TINY_VLMS["qwen2_vl"](tmp_path / "qwen")
    image = color_image((255, 0, 0), size=112)
    row = [EmbedInput(text="<|image_1|> what color is this ?", image=image)]
    default = VLM2VecModel.from_backbone(str(base))
    assert default.prepare(row)["image_grid_thw"].tolist() == [[1, 4, 4]]  # the tiny processor's 56 x 56 cap
    larger = VLM2VecModel.from_backbone(str(base), max_pixels=112 * 112)
    assert larger.prepare(row)["image_grid_thw"].tolist() == [[1, 8, 8]]
    small = VLM2VecModel.from_backbone(str(base), max_pixels=112 * 112, image_size=56)
    assert small.prepare(row)["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert small.preparer.image(image).size == (56, 56)
    with pytest.raises(ValueError, match="num_crops cannot be set for the qwen2_vl family"):
        VLM2VecModel.from_backbone(str(base), num_crops=4)
    llava = TINY_VLMS["llava_next"](tmp_path / "llava")
    with pytest.raises(ValueError, match="max_pixels cannot be set for the llava_next family"):
        VLM2VecModel.from_backbone(str(llava), max_pixels=1000)
    assert VLM2VecModel.from_backbone(str(llava), prompt_format="reference").config.image_size == 1344
    assert (
        VLM2VecModel.from_backbone(str(llava), prompt_format="reference", image_size=0).config.image_size
        is None
    )


def test_truncation_keeps_a_text_that_fits_verbatim(tmp_path):
    model = VLM2VecModel.from_backbone(str(TINY_VLMS["qwen2_vl"](tmp_path / "b")), max_text_tokens=3)
    assert model.preparer.truncate("a red car\n") == "a red car\n"  # the newline has no token here, yet stays
    assert model.preparer.truncate("a red car photo") == "a red car"
