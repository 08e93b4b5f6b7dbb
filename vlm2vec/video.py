"""Video rows for a VLM: the frames through Qwen2-VL / Qwen2.5-VL's video path, or as several images elsewhere.

Qwen2-VL and Qwen2.5-VL embed a video with their processor's ``videos=`` argument and one video placeholder
that the processor expands: ``<|vision_start|><|video_pad|><|vision_end|>`` in our prompt format, the bare
``<|video_pad|>`` in the ``reference`` format (TIGER-AI-Lab/VLM2Vec's ``VLM_VIDEO_TOKENS``; its
``process_input_text(..., add_video_token=True)`` writes ``TOKEN + " " + instruction + " " + text``). The other
batched families (LLaVA-Next, Idefics3, SmolVLM) get the frames as several images, one image token per frame.
Phi-3.5-V (processed row by row, one image per prompt here) takes no video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.video import load_video
from vlm2vec.adapters import VLMFamily

if TYPE_CHECKING:
    from vlm2vec.inputs import InputPreparer

# family -> (video placeholder in the "ours" format, in the "reference" format)
VIDEO_TOKENS: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>"),
    "qwen2_5_vl": ("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>"),
}


def native_video(family: VLMFamily) -> bool:
    """Whether the family's processor takes videos itself (else frames go in as images)."""
    return family.name in VIDEO_TOKENS


def check_video_family(family: VLMFamily) -> None:
    if not native_video(family) and not family.batched_processor:
        raise ValueError(
            f"the {family.name} family takes no video here (its processor takes one image per prompt); use "
            f"a family with a video path ({', '.join(VIDEO_TOKENS)}) or one that takes several images"
        )


def video_token(family: VLMFamily, prompt_format: str, num_frames: int) -> str:
    """The placeholder of one video: the family's video token, or one image token per frame."""
    if native_video(family):
        ours, reference = VIDEO_TOKENS[family.name]
        return reference if prompt_format == "reference" else ours
    return family.image_token(prompt_format) * num_frames


def video_prompt(preparer: InputPreparer, text: str | None, instruction: str | None, num_frames: int) -> str:
    """One video row's prompt: placeholder, then instruction and (truncated) text, as images are laid out."""
    token = video_token(preparer.family, preparer.prompt_format, num_frames)
    body = " ".join(part for part in (instruction, preparer.truncate(text)) if part)
    if preparer.prompt_format == "reference":
        prompt = f"{token} {body.lstrip()}"
    else:
        prompt = f"{token}\n{body}" if body else token
    if preparer.pooling == "eos":
        prompt += preparer.processor.tokenizer.eos_token
    return prompt


def process_with_videos(
    preparer: InputPreparer,
    rows: Sequence[Any],
    prompts: list[str],
    images: list[Image.Image | None],
) -> dict:
    """Processor inputs of a batch in which some rows have a video (``row.video``: frames, a file or a folder);
    ``prompts`` / ``images`` are the rows' image-path prompts and images, replaced here for the video rows."""
    family = preparer.family
    check_video_family(family)
    videos: list[list[Image.Image] | None] = []
    prompts = list(prompts)
    for index, row in enumerate(rows):
        source = getattr(row, "video", None)
        if source is None:
            videos.append(None)
            continue
        if images[index] is not None:
            raise ValueError("a row holds an image and a video; give one of them")
        frames = [preparer.image(frame) for frame in load_video(source)]  # --image-size applies per frame
        videos.append(frames)
        prompts[index] = video_prompt(
            preparer, getattr(row, "text", None), getattr(row, "instruction", None), len(frames)
        )
    processor = preparer.processor
    if native_video(family):
        present_images = [image for image in images if image is not None]
        present_videos = [frames for frames in videos if frames is not None]
        return dict(
            processor(
                text=prompts,
                images=present_images or None,
                videos=present_videos or None,
                padding=True,
                return_tensors="pt",
            )
        )
    per_row = [
        frames if frames is not None else ([image] if image is not None else [])
        for frames, image in zip(videos, images, strict=True)
    ]
    if family.nested_images:
        image_arg: Any = per_row
    else:
        image_arg = [image for row_images in per_row for image in row_images]
    return dict(processor(text=prompts, images=image_arg, padding=True, return_tensors="pt"))
