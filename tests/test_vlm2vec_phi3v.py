"""Phi-3.5-V (`phi3_v`): our side of it, offline. The model itself is NOT run here: it only exists as remote code on
the hub, which cannot be fetched in tests. What is checked is our code for it: the row-by-row processing
(`vlm2vec.adapters._process_row_by_row`) against a stand-in processor with Phi-3-V's call interface, the prompt
(`<|image_1|>` kept as the image token), and the `--trust-remote-code` refusal / pass-through when loading."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch import Tensor, nn
from vlm2vec_helpers import (
    color_image,
    single_thread,  # noqa: F401 (autouse fixture)
    word_tokenizer,
)

from core.protocol import EmbedInput
from vlm2vec.adapters import MMEB_IMAGE_TOKEN, get_family
from vlm2vec.inputs import InputPreparer
from vlm2vec.model import LoraSettings, VLM2VecConfig, VLM2VecModel
from vlm2vec.pooling import last_token_index

FAMILY = get_family("phi3_v")


class StandInPhi3VProcessor:
    """Phi-3-V's processor interface: one prompt per call; each `<|image_N|>` becomes a run of `-N` ids whose
    length depends on the image size; with images, `pixel_values [n, crops, 3, H, W]` (crops padded to a fixed
    count) and `image_sizes [n, 2]` (height, width)."""

    crops = 2
    side = 16

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer

    def num_image_tokens(self, image: Image.Image) -> int:
        """Placeholder run length of one image (grows with its size, like Phi-3-V's HD crops)."""
        return (image.height // self.side) * (image.width // self.side) + 1

    def pixels(self, image: Image.Image) -> Tensor:
        """`[crops, 3, side, side]` values of one image: the resized image, repeated per crop."""
        resized = np.asarray(image.convert("RGB").resize((self.side, self.side)), dtype=np.float32) / 255.0
        return torch.from_numpy(resized).permute(2, 0, 1).expand(self.crops, -1, -1, -1).clone()

    def __call__(
        self, text: str, images: list[Image.Image] | None = None, return_tensors: str | None = None
    ) -> dict[str, Tensor]:
        if not isinstance(text, str) or return_tensors != "pt":
            raise TypeError("the Phi-3-V processor takes one prompt per call and returns tensors")
        images = images or []
        pieces = re.split(r"<\|image_(\d+)\|>", text)
        tags = [int(tag) for tag in pieces[1::2]]
        if tags != list(range(1, len(images) + 1)):
            raise ValueError(f"image tags {tags} do not match {len(images)} images")
        ids: list[int] = []
        for index, chunk in enumerate(pieces[0::2]):
            ids += self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            if index < len(tags):
                ids += [-tags[index]] * self.num_image_tokens(images[index])
        out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if images:
            out["pixel_values"] = torch.stack([self.pixels(image) for image in images])
            out["image_sizes"] = torch.tensor([[image.height, image.width] for image in images])
        return out


def _processor(padding_side: str = "right") -> StandInPhi3VProcessor:
    tokenizer = word_tokenizer(["<|endoftext|>", "<|end|>"], eos="<|endoftext|>")
    tokenizer.padding_side = padding_side
    return StandInPhi3VProcessor(tokenizer)


def _rows() -> list[EmbedInput]:
    """Image rows of two sizes (so two run lengths) between text-only rows of two lengths."""
    return [
        EmbedInput(image=color_image((255, 0, 0), size=32), instruction="represent the given image"),
        EmbedInput(text="the dog"),
        EmbedInput(text=f"{MMEB_IMAGE_TOKEN} what color is this ?", image=color_image((0, 0, 255), size=48)),
        EmbedInput(text="a red car", instruction="find the caption"),
    ]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_row_by_row_pads_on_the_tokenizer_side_and_stacks_image_rows(padding_side):
    """Each row's ids sit unchanged on the non-padding side with mask 1 there and pad id / mask 0 elsewhere; the
    image runs and `pixel_values` / `image_sizes` come from the image rows only, in row order."""
    processor = _processor(padding_side)
    rows = _rows()
    batch = InputPreparer(FAMILY, processor)(rows)
    prompts = [FAMILY.prompt(row.text, row.instruction, row.image is not None) for row in rows]
    alone = [
        processor(text=p, images=[r.image] if r.image is not None else None, return_tensors="pt")
        for p, r in zip(prompts, rows, strict=True)
    ]
    lengths = [row["input_ids"].shape[-1] for row in alone]
    assert len(set(lengths)) == len(rows)  # every row needs a different amount of padding
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (len(rows), max(lengths))
    pad_id = processor.tokenizer.pad_token_id
    for index, (row, n) in enumerate(zip(alone, lengths, strict=True)):
        real = slice(ids.shape[1] - n, None) if padding_side == "left" else slice(0, n)
        pads = slice(0, ids.shape[1] - n) if padding_side == "left" else slice(n, None)
        assert ids[index, real].tolist() == row["input_ids"][0].tolist()
        assert mask[index, real].eq(1).all() and mask[index, pads].eq(0).all()
        assert ids[index, pads].eq(pad_id).all()
        assert ids[index, last_token_index(mask)[index]] == row["input_ids"][0, -1]
    with_image = [index for index, row in enumerate(rows) if row.image is not None]
    runs = (ids < 0).sum(-1).tolist()
    assert runs == [processor.num_image_tokens(row.image) if row.image is not None else 0 for row in rows]
    assert set(ids[ids < 0].tolist()) == {-1}
    assert batch["pixel_values"].shape == (
        len(with_image),
        processor.crops,
        3,
        processor.side,
        processor.side,
    )
    expected_pixels = torch.cat([alone[index]["pixel_values"] for index in with_image])
    torch.testing.assert_close(batch["pixel_values"], expected_pixels, rtol=0, atol=0)
    assert batch["image_sizes"].tolist() == [[rows[i].image.height, rows[i].image.width] for i in with_image]


def test_text_only_batch_has_no_pixels():
    """A batch without images has ids and mask only (left padded here); prompt and image slots must pair up."""
    processor = _processor("left")
    batch = FAMILY.process(processor, ["the dog", "a red car photo"], [None, None])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["attention_mask"].sum(-1).tolist() == [2, 4]
    word = processor.tokenizer.convert_tokens_to_ids
    assert batch["input_ids"][0].tolist() == [processor.tokenizer.pad_token_id] * 2 + [
        word("the"),
        word("dog"),
    ]
    with pytest.raises(ValueError, match="2 prompts but 1 image slots"):
        FAMILY.process(processor, ["the dog", "a cat"], [None])


def test_prompt_keeps_phi_image_token():
    """Phi-3.5-V's image token is MMEB's `<|image_1|>`: prompts keep exactly one copy where the row has an image."""
    preparer = InputPreparer(FAMILY, _processor())
    assert FAMILY.image_prompt == MMEB_IMAGE_TOKEN
    assert preparer.prompt(None, "represent the given image", has_image=True) == (
        f"{MMEB_IMAGE_TOKEN}\nrepresent the given image"
    )
    mmeb = f"{MMEB_IMAGE_TOKEN} what color is this ?"
    assert preparer.prompt(mmeb, None, has_image=True) == mmeb
    twice = preparer.prompt(f"{MMEB_IMAGE_TOKEN} a {MMEB_IMAGE_TOKEN} cat", None, has_image=True)
    assert twice.startswith(MMEB_IMAGE_TOKEN) and twice.count(MMEB_IMAGE_TOKEN) == 1
    assert preparer.prompt("the dog", "find", has_image=False) == "find the dog"
    with pytest.raises(ValueError, match="has no image"):
        preparer.prompt(mmeb, None, has_image=False)
    eos = InputPreparer(FAMILY, _processor(), pooling="eos")
    assert eos.prompt("the dog", None, has_image=False) == "the dog<|endoftext|>"


def _forbid_loading(monkeypatch) -> list[str]:
    """Make every hub/disk loader record its call and fail; returns the record."""
    calls: list[str] = []

    def refuse(name: str):
        def load(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} must not be called")

        return load

    for name in ("AutoConfig", "AutoModelForCausalLM", "AutoProcessor"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse(name))
    return calls


@pytest.mark.parametrize("lora", [None, LoraSettings(r=2, alpha=4)])
def test_phi3v_without_trust_remote_code_refuses_before_loading(tmp_path, monkeypatch, lora):
    calls = _forbid_loading(monkeypatch)
    with pytest.raises(ValueError, match="--trust-remote-code"):
        VLM2VecModel.from_backbone(str(tmp_path / "phi"), family="phi3_v")
    saved = tmp_path / "saved"
    saved.mkdir()
    config = VLM2VecConfig(base_model=str(tmp_path / "phi"), family="phi3_v", lora=lora)
    (saved / "vlm2vec_config.json").write_text(config.to_json())
    with pytest.raises(ValueError, match="--trust-remote-code"):
        VLM2VecModel.from_pretrained(saved)
    assert calls == []


def test_phi3v_with_trust_remote_code_passes_it_to_both_loaders(tmp_path, monkeypatch):
    """With the flag, the remote-code model class and processor are asked for it (both stubbed here)."""
    calls: dict[str, dict] = {}
    processor = _processor("left")

    def model_loader(path, **kwargs):
        calls["model"] = {"path": path, **kwargs}
        return nn.Linear(2, 2)

    def processor_loader(path, **kwargs):
        calls["processor"] = {"path": path, **kwargs}
        return processor

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_loader)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", processor_loader)
    path = str(tmp_path / "phi")
    model = VLM2VecModel.from_backbone(path, family="phi3_v", trust_remote_code=True)
    assert calls["model"] == {"path": path, "dtype": torch.float32, "trust_remote_code": True}
    assert calls["processor"] == {"path": path, "trust_remote_code": True}
    assert model.processor is processor and processor.tokenizer.padding_side == FAMILY.padding_side == "right"
    assert model.config.family == "phi3_v"
