"""Turn rows (optional image + instruction + text) into a backbone's processor inputs; picklable for workers.

One builder serves training (`vlm2vec.data.ContrastiveCollator`) and evaluation (`VLM2VecModel.encode`), so the same
row gives the same token ids in both: texts are kept verbatim (MMEB's trailing newline included, as the reference
keeps it), only the image placeholder is replaced by the family's token of the prompt format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlm2vec.adapters import VLMFamily, check_prompt_format
from vlm2vec.video import process_with_videos


@dataclass
class InputPreparer:
    """Prompt formatting (per family and prompt format), text truncation, EOS for `eos` pooling, the image resize
    and the processor call."""

    family: VLMFamily
    processor: Any
    pooling: str = "last"
    max_text_tokens: int | None = None
    prompt_format: str = "ours"
    image_size: int | None = None  # resize every image to image_size x image_size first (None: as it is)

    def __post_init__(self) -> None:
        check_prompt_format(self.prompt_format)

    def truncate(self, text: str | None) -> str | None:
        """Cut the text part (never the image tokens) to `max_text_tokens` tokens, on a token boundary; a text
        that fits is returned unchanged (whitespace the tokenizer has no token for included)."""
        if not text or self.max_text_tokens is None:
            return text
        encoded = self.processor.tokenizer(
            text,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_text_tokens + 1,
            return_offsets_mapping=True,
        )
        offsets = encoded["offset_mapping"]
        if len(offsets) <= self.max_text_tokens:
            return text
        return text[: offsets[self.max_text_tokens - 1][1]] if self.max_text_tokens > 0 else ""

    def prompt(self, text: str | None, instruction: str | None, has_image: bool) -> str:
        prompt = self.family.prompt(self.truncate(text), instruction, has_image, self.prompt_format)
        if self.pooling == "eos":
            prompt += self.processor.tokenizer.eos_token
        return prompt

    def image(self, image: Image.Image | None) -> Image.Image | None:
        """The image as the processor gets it: resized to a square of `image_size` when set (as the reference
        does for LLaVA-Next, 1344 x 1344, PIL's default filter)."""
        if image is None or not self.image_size:
            return image
        return image.resize((self.image_size, self.image_size))

    def __call__(self, rows: Sequence[Any]) -> dict[str, Tensor]:
        """Processor inputs for rows with `.text`, `.image` (PIL or None) and `.instruction`, and optionally
        `.video` (frames, a video file or a folder of frames; see `vlm2vec.video`)."""
        images = [self.image(getattr(row, "image", None)) for row in rows]
        prompts = [
            self.prompt(getattr(row, "text", None), getattr(row, "instruction", None), image is not None)
            for row, image in zip(rows, images, strict=True)
        ]
        if any(getattr(row, "video", None) is not None for row in rows):
            processed = process_with_videos(self, rows, prompts, images)
        else:
            processed = self.family.process(self.processor, prompts, images)
        batch = _attend_empty_rows(processed, self.processor)
        if self.prompt_format == "reference" and self.family.reference_text_positions:
            # The reference's Qwen2-VL code gives every token, image tokens included, 1-D positions.
            mask = batch["attention_mask"]
            batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return batch


def _attend_empty_rows(batch: dict[str, Tensor], processor: Any) -> dict[str, Tensor]:
    """Give a row that tokenised to nothing (the empty text of a blank MMEB candidate, on tokenizers that add no
    BOS, such as Qwen2's) one attended pad token where last-token pooling reads it. The reference pools such a row
    at a pad position whose attention is fully masked; with identical pad tokens everywhere that hidden state is
    the one of a single attended pad token, which is what this gives, without a fully masked attention row."""
    mask = batch["attention_mask"]
    empty = mask.sum(dim=-1) == 0
    if not bool(empty.any()):
        return batch
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = batch["input_ids"]
    if input_ids.shape[-1] == 0:
        input_ids = torch.full((input_ids.shape[0], 1), pad_id, dtype=input_ids.dtype)
        mask = torch.zeros_like(input_ids, dtype=mask.dtype)
    else:
        input_ids, mask = input_ids.clone(), mask.clone()
    slot = -1 if tokenizer.padding_side == "left" else 0
    input_ids[empty, slot] = pad_id
    mask[empty, slot] = 1
    return {**batch, "input_ids": input_ids, "attention_mask": mask}
