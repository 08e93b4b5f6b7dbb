"""Turn rows (optional image + instruction + text) into a backbone's processor inputs; picklable for workers.

One builder serves training (`vlm2vec.data.ContrastiveCollator`) and evaluation (`VLM2VecModel.encode`), so the same
row gives the same token ids in both: texts are kept verbatim (MMEB's trailing newline included, as the reference
keeps it), only the image placeholder is replaced by the family's token of the prompt format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch import Tensor

from vlm2vec.adapters import VLMFamily, check_prompt_format


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
        """Processor inputs for rows with `.text`, `.image` (PIL or None) and `.instruction`."""
        images = [self.image(getattr(row, "image", None)) for row in rows]
        prompts = [
            self.prompt(getattr(row, "text", None), getattr(row, "instruction", None), image is not None)
            for row, image in zip(rows, images, strict=True)
        ]
        batch = self.family.process(self.processor, prompts, images)
        if self.prompt_format == "reference" and self.family.reference_text_positions:
            # The reference's Qwen2-VL code gives every token, image tokens included, 1-D positions.
            mask = batch["attention_mask"]
            batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return batch
