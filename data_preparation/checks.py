"""Image checks shared by downloads (run inside img2dataset's workers) and data already on disk.

A check looks at the original bytes, cheapest test first: can the header be read (``undecodable``), is the
shorter side at least ``min_image_size`` (``too_small``), is the aspect ratio at most ``max_aspect_ratio``
(``extreme_aspect``), and does the whole image decode (``truncated`` when the data ends early, else
``undecodable``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

UNDECODABLE = "undecodable"
TRUNCATED = "truncated"
TOO_SMALL = "too_small"
EXTREME_ASPECT = "extreme_aspect"
TOO_LARGE = "too_large"
IMAGE_REASONS = (UNDECODABLE, TRUNCATED, TOO_SMALL, EXTREME_ASPECT, TOO_LARGE)


@dataclass(frozen=True)
class ImageChecks:
    """Which images to keep: shorter side >= ``min_image_size`` px, longer/shorter side <= ``max_aspect_ratio``."""

    min_image_size: int = 32
    max_aspect_ratio: float = 10.0

    def __post_init__(self) -> None:
        if self.min_image_size < 1:
            raise ValueError(f"min_image_size must be >= 1, got {self.min_image_size}")
        if self.max_aspect_ratio < 1.0:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


@dataclass(frozen=True)
class Rejection:
    """Why an image is dropped: ``reason`` (one of :data:`IMAGE_REASONS`) and the decoder's detail."""

    reason: str
    detail: str

    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


def check_image_bytes(data: bytes, checks: ImageChecks) -> Rejection | None:
    """``None`` when the image passes every check, else the first check it fails."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images cannot be detected")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if min(width, height) < checks.min_image_size:
                return Rejection(TOO_SMALL, f"{width}x{height} < {checks.min_image_size} px")
            if max(width, height) / min(width, height) > checks.max_aspect_ratio:
                return Rejection(EXTREME_ASPECT, f"{width}x{height} > {checks.max_aspect_ratio}:1")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Rejection(TOO_LARGE, str(err))
    except UnidentifiedImageError:
        return Rejection(UNDECODABLE, "not an image format PIL can read")
    except (OSError, SyntaxError, ValueError) as err:
        reason = TRUNCATED if "truncated" in str(err).lower() else UNDECODABLE
        return Rejection(reason, str(err) or type(err).__name__)
    return None
