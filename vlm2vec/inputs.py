"""Turn rows (optional image + instruction + text) into a backbone's processor inputs; picklable for workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vlm2vec.adapters import VLMFamily


@dataclass
class InputPreparer:
    """Prompt formatting (per family), text truncation, EOS for `eos` pooling, and the processor call."""

    family: VLMFamily
    processor: Any
    pooling: str = "last"
    max_text_tokens: int | None = None

    def truncate(self, text: str | None) -> str | None:
        """Cut the text part (never the image tokens) to `max_text_tokens` tokens, on a token boundary."""
        if not text or self.max_text_tokens is None:
            return text
        encoded = self.processor.tokenizer(
            text,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_text_tokens,
            return_offsets_mapping=True,
        )
        offsets = encoded["offset_mapping"]
        return text[: offsets[-1][1]] if offsets else ""

    def prompt(self, text: str | None, instruction: str | None, has_image: bool) -> str:
        prompt = self.family.prompt(self.truncate(text), instruction, has_image)
        if self.pooling == "eos":
            prompt += self.processor.tokenizer.eos_token
        return prompt

    def __call__(self, rows: Sequence[Any]) -> dict[str, Tensor]:
        """Processor inputs for rows with `.text`, `.image` (PIL or None) and `.instruction`."""
        images = [getattr(row, "image", None) for row in rows]
        prompts = [
            self.prompt(getattr(row, "text", None), getattr(row, "instruction", None), image is not None)
            for row, image in zip(rows, images, strict=True)
        ]
        return self.family.process(self.processor, prompts, images)
