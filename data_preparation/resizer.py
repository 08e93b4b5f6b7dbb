"""img2dataset's resizer with this package's image checks run first, on the original downloaded bytes.

img2dataset decodes with OpenCV, which accepts a truncated JPEG (the missing part turns grey), and it resizes
before anything downstream could look at the original. Running :func:`check_image_bytes` inside the worker, on
the bytes as downloaded, catches truncated and undecodable files and applies the size / aspect-ratio rules to
the original size; a rejection becomes img2dataset's ``failed_to_resize`` status with ``"<reason>: <detail>"``
as its error message.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would query PyPI on import

from img2dataset.resizer import Resizer  # noqa: E402

from data_preparation.checks import ImageChecks, check_image_bytes  # noqa: E402


class CheckedResizer(Resizer):
    """A picklable :class:`img2dataset.resizer.Resizer` that rejects images failing :class:`ImageChecks`."""

    def __init__(self, *args, checks: ImageChecks, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checks = checks

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        rejection = check_image_bytes(img_stream.read(), self.checks)
        img_stream.seek(0)
        if rejection is not None:
            return None, None, None, None, None, rejection.message()
        return super().__call__(img_stream, blurring_bbox_list)
