"""One small adapter per VLM family: image token, prompt layout, processor call, padding side, LoRA targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

# The placeholder MMEB-train (and Phi-3.5-V) writes where the image goes; replaced by each family's own token.
MMEB_IMAGE_TOKEN = "<|image_1|>"

_DECODER_LORA = (
    r".*(language_model|text_model)\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)


@dataclass(frozen=True)
class VLMFamily:
    """How one backbone family is loaded, prompted and processed."""

    name: str
    model_types: tuple[str, ...]
    model_class: str
    image_prompt: str
    padding_side: str
    lora_target_modules: str
    trust_remote_code: bool = False
    nested_images: bool = False
    batched_processor: bool = True

    def prompt(self, text: str | None, instruction: str | None, has_image: bool) -> str:
        """Prompt for one row: the family's image token (when there is an image), instruction, then text.

        A text that already holds `<|image_1|>` (MMEB-train) gets the family's image token in place of the first
        one (further copies are dropped: a row has one image); for Phi-3.5-V that token is `<|image_1|>` itself.
        """
        body = " ".join(part for part in (instruction, text) if part)
        if MMEB_IMAGE_TOKEN in body:
            if not has_image:
                raise ValueError(f"prompt {body[:80]!r} holds {MMEB_IMAGE_TOKEN} but the row has no image")
            head, _, tail = body.partition(MMEB_IMAGE_TOKEN)
            return head + self.image_prompt + tail.replace(MMEB_IMAGE_TOKEN, "")
        if has_image:
            return f"{self.image_prompt}\n{body}" if body else self.image_prompt
        return body

    def process(self, processor, prompts: Sequence[str], images: Sequence[Image.Image | None]) -> dict:
        """Tokenise prompts and preprocess the images of the rows that have one; a padded batch."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image slots")
        if not self.batched_processor:
            return _process_row_by_row(processor, prompts, images)
        present = [image for image in images if image is not None]
        if self.nested_images:
            image_arg = [[image] if image is not None else [] for image in images] if present else None
        else:
            image_arg = present or None
        return dict(processor(text=list(prompts), images=image_arg, padding=True, return_tensors="pt"))


def _process_row_by_row(processor, prompts: Sequence[str], images: Sequence[Image.Image | None]) -> dict:
    """For processors that take one prompt per call (Phi-3.5-V): process rows, then pad and concatenate."""
    tokenizer = processor.tokenizer
    rows = [
        processor(text=prompt, images=[image] if image is not None else None, return_tensors="pt")
        for prompt, image in zip(prompts, images, strict=True)
    ]
    length = max(row["input_ids"].shape[-1] for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        ids = row["input_ids"][0]
        span = slice(length - len(ids), length) if tokenizer.padding_side == "left" else slice(0, len(ids))
        input_ids[index, span] = ids
        attention_mask[index, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    with_image = [row for row in rows if "pixel_values" in row]
    if with_image:
        batch["pixel_values"] = torch.cat([row["pixel_values"] for row in with_image])
        batch["image_sizes"] = torch.cat([row["image_sizes"] for row in with_image])
    return batch


FAMILIES: dict[str, VLMFamily] = {
    family.name: family
    for family in (
        VLMFamily(
            name="qwen2_vl",
            model_types=("qwen2_vl",),
            model_class="Qwen2VLForConditionalGeneration",
            image_prompt="<|vision_start|><|image_pad|><|vision_end|>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
        ),
        VLMFamily(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            model_class="Qwen2_5_VLForConditionalGeneration",
            image_prompt="<|vision_start|><|image_pad|><|vision_end|>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
        ),
        VLMFamily(
            name="llava_next",
            model_types=("llava_next",),
            model_class="LlavaNextForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
        ),
        VLMFamily(
            name="idefics3",
            model_types=("idefics3",),
            model_class="Idefics3ForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            nested_images=True,
        ),
        VLMFamily(
            name="smolvlm",
            model_types=("smolvlm",),
            model_class="SmolVLMForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            nested_images=True,
        ),
        VLMFamily(
            name="phi3_v",
            model_types=("phi3_v",),
            model_class="AutoModelForCausalLM",
            image_prompt=MMEB_IMAGE_TOKEN,
            padding_side="right",
            lora_target_modules=r".*model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))",
            trust_remote_code=True,
            batched_processor=False,
        ),
    )
}


def family_for(model_type: str) -> VLMFamily:
    """The adapter of a transformers `config.model_type`; a clear error listing the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for family in FAMILIES.values() for t in family.model_types)
    raise ValueError(
        f"no VLM2Vec adapter for model_type {model_type!r}; supported: {known} (or pass --family)"
    )


def get_family(name: str) -> VLMFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown VLM family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]
