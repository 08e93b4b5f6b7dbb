"""Videos as a few frames: sampled uniformly from a video file (decoded with PyAV) or a folder of extracted frames.

The sampling is VLM2Vec-V2's (TIGER-AI-Lab/VLM2Vec ``src/utils/vision_utils``): a video file first has at most
:data:`MAX_FRAMES_SAVED` (64) frames picked at ``floor(i * total / 64)`` (its ``save_frames``, done with ffmpeg
there and written to disk; here decoded in memory, nothing written), then ``num_frames`` of those are taken at
``numpy.linspace(0, count - 1, num_frames)`` rounded down (its ``process_video_frames``). A folder of frames is
sorted naturally (``frame_2`` before ``frame_10``) and sampled the same way. A video with fewer frames than asked
gives all of its frames, as the reference does.

The reference's video-QA parsers (Video-MME, NExTQA, EgoSchema, MVBench, ActivityNetQA) extract a video file's frames
differently, with OpenCV at a fixed step: frames ``0, s, 2s, ...`` (at most 64) with ``s = max(1, total // 64)``.
``extraction="step"`` reproduces that; ``"spread"`` (the default) is the ``floor(i * total / 64)`` rule above.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_NUM_FRAMES = 8  # MMEB-V2: 8 frames per video
MAX_FRAMES_SAVED = 64  # the reference's max_frames_saved
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
EXTRACTIONS = ("spread", "step")  # how a video file's frames are extracted before sampling (see the module)

VideoSource = str | Path | Sequence[Image.Image | Path]
"""A video file, a folder of frames, or the (already sampled) frames: images or frame files."""


class VideoError(ValueError):
    """A video that cannot be read: missing, empty, or not a video; the message says which and where."""


def uniform_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``range(total)`` (first and last included, rounded down); all
    ``total`` indices when there are no more than ``num_frames``."""
    if num_frames < 1:
        raise VideoError(f"num_frames must be >= 1, got {num_frames}")
    if total <= num_frames:
        return list(range(total))
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def saved_frame_indices(
    total: int, max_saved: int = MAX_FRAMES_SAVED, extraction: str = "spread"
) -> list[int]:
    """The frames the reference extracts from a video of ``total`` frames before sampling: ``floor(i * total /
    max_saved)`` (``"spread"``) or every ``max(1, total // max_saved)``-th frame, at most ``max_saved``
    (``"step"``, its video-QA parsers)."""
    if extraction not in EXTRACTIONS:
        raise VideoError(f"unknown frame extraction {extraction!r}; known: {', '.join(EXTRACTIONS)}")
    if total <= max_saved:
        return list(range(total))
    if extraction == "step":
        return list(range(0, total, max(1, total // max_saved)))[:max_saved]
    step = total / max_saved
    return [int(np.floor(i * step)) for i in range(max_saved)]


def video_frame_indices(
    total: int, num_frames: int = DEFAULT_NUM_FRAMES, extraction: str = "spread"
) -> list[int]:
    """Indices into a video file's frames: :func:`saved_frame_indices`, then :func:`uniform_indices` of those."""
    saved = saved_frame_indices(total, extraction=extraction)
    return [saved[i] for i in uniform_indices(len(saved), num_frames)]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: str | Path) -> list[Path]:
    """The frame images of a folder in natural order (``frame_2.jpg`` before ``frame_10.jpg``)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def sample_frame_paths(folder: str | Path, num_frames: int = DEFAULT_NUM_FRAMES) -> list[Path]:
    """``num_frames`` frames of a folder of extracted frames, uniformly spaced."""
    frames = list_frames(folder)
    if not frames:
        raise VideoError(f"{folder} holds no frames ({', '.join(FRAME_EXTENSIONS)})")
    return [frames[i] for i in uniform_indices(len(frames), num_frames)]


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def decode_video(
    path: str | Path, num_frames: int = DEFAULT_NUM_FRAMES, extraction: str = "spread"
) -> list[Image.Image]:
    """``num_frames`` RGB frames of a video file (:func:`video_frame_indices`), decoded with PyAV."""
    import av

    path = Path(path)
    try:
        total = _count_frames(path)
        wanted = set(video_frame_indices(total, num_frames, extraction))
        frames = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    frames.append(frame.to_image().convert("RGB"))
                if len(frames) == len(wanted):
                    break
    except (av.error.FFmpegError, IndexError) as error:
        raise VideoError(f"{path} cannot be decoded as a video ({error})") from error
    if not frames:
        raise VideoError(f"{path} has no video frames")
    return frames


def _open_frame(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def load_video(
    source: VideoSource, num_frames: int = DEFAULT_NUM_FRAMES, extraction: str = "spread"
) -> list[Image.Image]:
    """The frames a model sees of ``source``: a folder of frames or a video file (its frames extracted by
    ``extraction``, see the module), sampled to ``num_frames``; a list of frames (images, or frame files opened
    here) is taken as it is (already sampled)."""
    if not isinstance(source, (str, Path)):
        frames = list(source)
        if not frames:
            raise VideoError("a video needs at least one frame")
        return [f.convert("RGB") if isinstance(f, Image.Image) else _open_frame(Path(f)) for f in frames]
    path = Path(source)
    if path.is_dir():
        return [_open_frame(p) for p in sample_frame_paths(path, num_frames)]
    if path.is_file():
        return decode_video(path, num_frames, extraction)
    raise VideoError(f"video {path} not found (a video file or a folder of frames)")


def check_video_source(source: str | Path) -> None:
    """Raise :class:`VideoError` unless ``source`` is a video file or a folder holding frames (cheap: no decode)."""
    path = Path(source)
    if path.is_dir():
        if not list_frames(path):
            raise VideoError(f"{path} holds no frames ({', '.join(FRAME_EXTENSIONS)})")
    elif not path.is_file():
        raise VideoError(f"video {path} not found (a video file or a folder of frames)")
