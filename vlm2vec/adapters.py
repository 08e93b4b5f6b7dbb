"""One small adapter per VLM family: image token, prompt layout, processor call, padding side, LoRA targets.

Two prompt formats (:data:`PROMPT_FORMATS`):

- ``ours``: what ``vlm2vec.train`` has always written (Qwen2-VL's image is ``<|vision_start|><|image_pad|>
  <|vision_end|>``, an image without a placeholder in its text goes first, then a newline); the format of our runs.
- ``reference``: TIGER-AI-Lab/VLM2Vec's, the format its released models were trained and evaluated with. Its
  ``VLM_IMAGE_TOKENS`` replace MMEB's ``<|image_1|>`` in place by ``<|image_pad|>`` alone for Qwen2-VL / Qwen2.5-VL
  (no vision start / end markers), ``<image>`` for LLaVA-Next, and keep ``<|image_1|>`` for Phi-3.5-V; its
  ``process_input_text`` joins ``instruction + " " + text`` and puts ``TOKEN + " "`` in front when the text has no
  image token. Texts are kept verbatim in both formats (MMEB's trailing newline included, as the reference keeps it
  in training and evaluation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

# The placeholder MMEB-train (and Phi-3.5-V) writes where the image goes; replaced by each family's own token.
MMEB_IMAGE_TOKEN = "<|image_1|>"
PROMPT_FORMATS = ("ours", "reference")
# Processor settings of the image resolution, by the families whose processors have them.
IMAGE_OPTIONS = ("num_crops", "min_pixels", "max_pixels")
_DANGLING = re.compile(r"[ \t]*" + re.escape(MMEB_IMAGE_TOKEN) + r"[ \t]*")


def drop_image_token(text: str) -> str:
    """`text` without `<|image_1|>` and the spaces around it (one space stays between words): for MMEB-train's
    text-only rows that still carry the placeholder (WebQA). Other whitespace, a trailing newline included, stays."""

    def replace(match: re.Match) -> str:
        start, end = match.start(), match.end()
        at_edge = start == 0 or end == len(text) or text[start - 1] == "\n" or text[end] == "\n"
        return "" if at_edge else " "

    return _DANGLING.sub(replace, text)


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
    # The reference's image token (`VLM_IMAGE_TOKENS`); None: the family has no reference model, `image_prompt`.
    reference_image_prompt: str | None = None
    # Class names a checkpoint of this family records (config.json `architectures`, peft `base_model_class`).
    architectures: tuple[str, ...] = ()
    # Square side the reference resizes every image to for this family (LLaVA-Next: 1344), None: no resize.
    reference_image_size: int | None = None
    # Reference format only: every token, image tokens included, gets 1-D text positions. The reference's Qwen2-VL
    # code finds images by `<|vision_start|>`, which its prompt does not have; stock transformers would give the
    # image tokens 3-D M-RoPE positions instead.
    reference_text_positions: bool = False
    image_options: tuple[str, ...] = ()  # which of IMAGE_OPTIONS the processor takes

    def image_token(self, prompt_format: str = "ours") -> str:
        """The token a prompt of `prompt_format` marks the image with."""
        check_prompt_format(prompt_format)
        if prompt_format == "reference" and self.reference_image_prompt is not None:
            return self.reference_image_prompt
        return self.image_prompt

    def prompt(
        self, text: str | None, instruction: str | None, has_image: bool, prompt_format: str = "ours"
    ) -> str:
        """Prompt for one row: the family's image token (when there is an image), instruction, then text.

        A text that already holds `<|image_1|>` (MMEB) gets the family's image token in place of the first one
        (further copies are dropped: a row has one image); for Phi-3.5-V that token is `<|image_1|>` itself. A
        row with an image whose text has no placeholder gets the token in front: `TOKEN\nbody` (``ours``) or
        `TOKEN body` (``reference``, which is MMEB's own layout, so a text whose leading `<|image_1|>` was
        removed upstream gets back the prompt it was trained with). A text-only row holding `<|image_1|>` is an
        error (MMEB-train's are cleaned when read, see `vlm2vec.data`).
        """
        token = self.image_token(prompt_format)
        body = " ".join(part for part in (instruction, text) if part)
        if MMEB_IMAGE_TOKEN in body:
            if not has_image:
                raise ValueError(f"prompt {body[:80]!r} holds {MMEB_IMAGE_TOKEN} but the row has no image")
            head, _, tail = body.partition(MMEB_IMAGE_TOKEN)
            return head + token + tail.replace(MMEB_IMAGE_TOKEN, "")
        if not has_image:
            return body
        if prompt_format == "reference":
            return f"{token} {body.lstrip()}"
        return f"{token}\n{body}" if body else token

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


def check_prompt_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {PROMPT_FORMATS}")


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
            reference_image_prompt="<|image_pad|>",
            architectures=("Qwen2VLForConditionalGeneration",),
            reference_text_positions=True,
            image_options=("min_pixels", "max_pixels"),
        ),
        VLMFamily(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            model_class="Qwen2_5_VLForConditionalGeneration",
            image_prompt="<|vision_start|><|image_pad|><|vision_end|>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            reference_image_prompt="<|image_pad|>",
            architectures=("Qwen2_5_VLForConditionalGeneration",),
            reference_text_positions=True,
            image_options=("min_pixels", "max_pixels"),
        ),
        VLMFamily(
            name="llava_next",
            model_types=("llava_next",),
            model_class="LlavaNextForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            reference_image_prompt="<image>",
            architectures=("LlavaNextForConditionalGeneration",),
            reference_image_size=1344,
        ),
        VLMFamily(
            name="idefics3",
            model_types=("idefics3",),
            model_class="Idefics3ForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            nested_images=True,
            architectures=("Idefics3ForConditionalGeneration",),
        ),
        VLMFamily(
            name="smolvlm",
            model_types=("smolvlm",),
            model_class="SmolVLMForConditionalGeneration",
            image_prompt="<image>",
            padding_side="left",
            lora_target_modules=_DECODER_LORA,
            nested_images=True,
            architectures=("SmolVLMForConditionalGeneration",),
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
            reference_image_prompt=MMEB_IMAGE_TOKEN,
            architectures=("Phi3VForCausalLM",),
            image_options=("num_crops",),
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


def family_for_architecture(name: str) -> VLMFamily | None:
    """The adapter of a model class name (config.json `architectures`, peft's `base_model_class`), or None."""
    for family in FAMILIES.values():
        if name in family.architectures:
            return family
    return None


def get_family(name: str) -> VLMFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown VLM family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]
