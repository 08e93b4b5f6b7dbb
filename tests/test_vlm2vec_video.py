"""Videos: uniform frame sampling from MP4s (encoded here with PyAV from the sample images) and frame folders; a
tiny random Qwen2-VL embeds them through its video path; two-tower models take the mean of frame embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from integration_helpers import COCO as COCO_MINI
from PIL import Image
from transformers import AutoProcessor, Qwen2VLVideoProcessor
from vlm2vec_helpers import save_tiny_llava_next, save_tiny_qwen2_vl, single_thread  # noqa: F401

from core.protocol import EmbedInput, fused_encode
from core.video import (
    MAX_FRAMES_SAVED,
    VideoError,
    decode_video,
    list_frames,
    load_video,
    sample_frame_paths,
    saved_frame_indices,
    uniform_indices,
    video_frame_indices,
)
from evaluate.layouts.mmeb_v2 import VIDEO_QA_PROMPT
from vlm2vec import VLM2VecModel
from vlm2vec.video import video_prompt

COCO = COCO_MINI / "val2017"
SIZE = (64, 48)


def sample_images(count: int) -> list[Image.Image]:
    files = sorted(COCO.glob("*.jpg"))[:count]
    out = []
    for path in files:
        with Image.open(path) as image:
            out.append(image.convert("RGB").resize(SIZE))
    return out


def write_mp4(path: Path, frames: list[Image.Image], fps: int = 4) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return path


def write_frames(folder: Path, frames: list[Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for index, image in enumerate(frames, start=1):
        image.save(folder / f"frame_{index}.jpg", quality=95)
    return folder


def nearest(frame: Image.Image, sources: list[Image.Image]) -> int:
    pixels = np.asarray(frame, dtype=np.float64)
    return int(np.argmin([((pixels - np.asarray(s, dtype=np.float64)) ** 2).mean() for s in sources]))


def test_uniform_indices_by_hand():
    # linspace(0, total - 1, n) rounded down: i * (total - 1) / (n - 1)
    for total, n in ((10, 4), (100, 8), (9, 8)):
        assert uniform_indices(total, n) == [math.floor(i * (total - 1) / (n - 1)) for i in range(n)]
    assert uniform_indices(5, 8) == [0, 1, 2, 3, 4]  # fewer frames than asked: all of them (the reference)
    total = 200  # > 64 frames: the reference saves floor(i * total / 64) first, then samples 8 of those
    saved = [math.floor(i * total / MAX_FRAMES_SAVED) for i in range(MAX_FRAMES_SAVED)]
    assert video_frame_indices(total, 8) == [saved[math.floor(i * 63 / 7)] for i in range(8)]
    with pytest.raises(VideoError):
        uniform_indices(10, 0)


def test_stepped_extraction_of_the_video_qa_parsers_by_hand():
    # the reference's OpenCV loop: frames 0, s, 2s, ... while fewer than 64 are saved and the frame exists
    for total in (64, 100, 200, 130):
        step = max(1, total // MAX_FRAMES_SAVED)
        saved, index = [], 0
        while len(saved) < MAX_FRAMES_SAVED and index < total:
            saved.append(index)
            index += step
        assert saved_frame_indices(total, extraction="step") == saved
        assert video_frame_indices(total, 8, "step") == [
            saved[math.floor(i * (len(saved) - 1) / 7)] for i in range(8)
        ]
    # the two rules differ unless the length is a multiple of 64
    assert saved_frame_indices(100, extraction="step") != saved_frame_indices(100)
    assert saved_frame_indices(128, extraction="step") == saved_frame_indices(128)
    with pytest.raises(VideoError, match="unknown frame extraction"):
        saved_frame_indices(100, extraction="every")


def test_mp4_decodes_the_sampled_frames(tmp_path):
    sources = sample_images(12)
    video = write_mp4(tmp_path / "clip.mp4", sources)
    frames = decode_video(video, num_frames=4)
    assert [f.size for f in frames] == [SIZE] * 4
    assert [nearest(f, sources) for f in frames] == uniform_indices(12, 4)
    with pytest.raises(VideoError, match="cannot be decoded"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video")
        decode_video(tmp_path / "bad.mp4")


def test_frame_folder_natural_order(tmp_path):
    sources = sample_images(12)
    folder = write_frames(tmp_path / "vid", sources)
    assert [p.name for p in list_frames(folder)] == [f"frame_{i}.jpg" for i in range(1, 13)]
    picked = sample_frame_paths(folder, 4)
    assert [int(p.stem.split("_")[1]) - 1 for p in picked] == uniform_indices(12, 4)
    frames = load_video(folder, 4)
    assert [nearest(f, sources) for f in frames] == uniform_indices(12, 4)
    with pytest.raises(VideoError, match="not found"):
        load_video(tmp_path / "missing")


def save_video_qwen(path: Path) -> Path:
    """The tiny random Qwen2-VL with a video processor of 56 x 56 pixels per frame (4 tokens per 2 frames)."""
    path = save_tiny_qwen2_vl(path)
    processor = AutoProcessor.from_pretrained(path)
    processor.video_processor = Qwen2VLVideoProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return save_video_qwen(tmp_path_factory.mktemp("qwen") / "model")


def test_video_qa_reference_prompt_is_the_references_text(tiny_qwen, tmp_path):
    """The reference's video-QA query is f"{video_token} {TASK_PROMPT} {question}" with a prompt ending in
    "Question: ": two spaces before the question, kept by the reference prompt format."""
    model = VLM2VecModel.from_pretrained(tiny_qwen, prompt_format="reference")
    question = "why?\nOptions:\n(A) yes\n(B) no"
    row = EmbedInput(
        text=question, instruction=VIDEO_QA_PROMPT, video=write_frames(tmp_path / "v", sample_images(2))
    )
    prompt = video_prompt(model.preparer, row.text, row.instruction, 2)
    assert prompt == f"<|video_pad|> {VIDEO_QA_PROMPT} {question}"
    assert "Question:  why?" in prompt


@pytest.mark.parametrize("prompt_format", ["ours", "reference"])
def test_qwen2_vl_embeds_a_video(tiny_qwen, tmp_path, prompt_format):
    model = VLM2VecModel.from_pretrained(tiny_qwen, prompt_format=prompt_format)
    sources = sample_images(8)
    folder = write_frames(tmp_path / "vid", sources)
    tokenizer = model.processor.tokenizer
    row = EmbedInput(text="a cat", instruction="find", video=folder)
    batch = model.prepare([row])
    grid = batch["video_grid_thw"][0]
    video_pad = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((batch["input_ids"][0] == video_pad).sum()) == int(grid.prod()) // 4  # merge_size 2 x 2
    assert int(grid[0]) == 4  # 8 frames, temporal patches of 2
    text = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert ("<|vision_start|>" in text) == (prompt_format == "ours")
    alone = model.encode([row])
    # the same frames given as images, in a batch mixed with a text row and an image row
    mixed = model.encode(
        [
            EmbedInput(text="a dog"),
            EmbedInput(text="a cat", instruction="find", video=load_video(folder)),
            EmbedInput(text="sky", image=sources[0]),
        ]
    )
    assert alone.shape == (1, 32)
    torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=1e-4)
    assert float((mixed[0] - mixed[1]).abs().max()) > 1e-3  # the video changes the embedding
    # a video differs from its first frame as an image
    still = model.encode([EmbedInput(text="a cat", instruction="find", image=sources[0])])
    assert float((still[0] - alone[0]).abs().max()) > 1e-3


class PixelTwoTower:
    """A deterministic two-tower model: an image is its mean colour and a fixed projection of its pixels."""

    def __init__(self) -> None:
        self.projection = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0))

    def encode_image(self, images, normalize=True):
        rows = [torch.tensor(np.asarray(i.resize((8, 8)), dtype=np.float32)).flatten() / 255 for i in images]
        return F.normalize(torch.stack(rows) @ self.projection, dim=-1)

    def encode_text(self, texts, normalize=True):
        return F.normalize(torch.ones(len(texts), 16) * torch.arange(1, 17), dim=-1)


def test_two_tower_video_is_the_mean_of_its_frames(tmp_path):
    model = PixelTwoTower()
    frames = sample_images(6)
    out = fused_encode(model, [EmbedInput(video=frames), EmbedInput(text="a cat", video=frames)])
    per_frame = model.encode_image(frames).double()
    mean = per_frame.mean(dim=0)
    video = mean / mean.norm()
    torch.testing.assert_close(out[0].double(), video, atol=1e-6, rtol=1e-6)
    text = model.encode_text(["a cat"])[0].double()
    fused = (video + text) / (video + text).norm()
    torch.testing.assert_close(out[1].double(), fused, atol=1e-6, rtol=1e-6)


def test_pixel_bounds_and_image_size_reach_the_video_frames(tiny_qwen):
    """`--min-pixels` / `--max-pixels` bound each video frame as they bound an image; `--image-size` resizes each
    frame first (the reference's resolution applies to frames too). Grids are in 14-pixel patches."""
    frames = sample_images(4)  # 64 x 48
    rows = [EmbedInput(text="a", video=frames), EmbedInput(text="b", image=frames[0])]

    def grids(**settings) -> tuple[list, list]:
        batch = VLM2VecModel.from_pretrained(tiny_qwen, **settings).prepare(rows)
        return batch["video_grid_thw"].tolist(), batch["image_grid_thw"].tolist()

    assert grids()[0] == [[2, 4, 4]]  # the saved video processor: 56 x 56 per frame
    fixed = 112 * 112
    assert grids(min_pixels=fixed, max_pixels=fixed) == (
        [[2, 8, 10]],
        [[1, 8, 10]],
    )  # 112 x 140 ~ 12544 pixels
    loose = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 64}
    assert grids(**loose)[0] == [[2, 4, 4]]  # 48 x 64 rounded to 56 x 56
    assert grids(**loose, image_size=112)[0] == [[2, 8, 8]]  # each frame resized to 112 x 112 first


def test_llava_next_takes_the_frames_as_images(tmp_path):
    """A family without a video path: one image token per frame, the frames as that row's images; in a batch
    mixed with an image row and a text row each row embeds as it does alone, and the frames' order matters."""
    path = save_tiny_llava_next(tmp_path / "llava")
    frames = sample_images(3)
    # the family's default resize (1344 x 1344, the reference's) applies to every frame as to an image
    resized = VLM2VecModel.from_pretrained(path).prepare([EmbedInput(video=frames)])["image_sizes"]
    assert resized.tolist() == [[1344, 1344]] * 3
    model = VLM2VecModel.from_pretrained(path, image_size=0)  # no resize: small and fast
    video = EmbedInput(text="a cat", instruction="find", video=write_frames(tmp_path / "vid", frames))
    image = EmbedInput(text="sky", image=frames[0])
    text = EmbedInput(text="a dog")
    assert video_prompt(model.preparer, "a cat", "find", 3).count("<image>") == 3
    batch = model.prepare([video, image])
    assert batch["image_sizes"].tolist() == [[48, 64]] * 4  # the video row's three frames, then the image
    alone = [model.encode([row])[0] for row in (image, video, text)]
    mixed = model.encode([image, video, text])
    for got, want in zip(mixed, alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    reversed_frames = model.encode([EmbedInput(text="a cat", instruction="find", video=frames[::-1])])[0]
    assert float((reversed_frames - alone[1]).abs().max()) > 1e-4
