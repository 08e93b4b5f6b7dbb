"""What every layout reader shares: the error that lists the accepted layouts, image checks, and images read
from inside a zip archive (decoded in memory; the archive is never extracted)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

ImageInput = Path | Image.Image
"""What the loaders hand to the encoder: an image file, or an image decoded in memory (from an archive or a
parquet/`datasets` column). The same two kinds as :data:`evaluate.encoding.ImageSource`."""


class LayoutError(ValueError):
    """The data does not have a layout the task accepts; the message lists every accepted layout."""


@dataclass(frozen=True)
class Layout:
    name: str
    needs: str  # the files it needs, on one line


@dataclass(frozen=True)
class Layouts:
    """The layouts one task accepts; ``text`` is shown in ``--help`` and below every layout error."""

    task: str
    layouts: tuple[Layout, ...]
    notes: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        width = max(len(layout.name) for layout in self.layouts) + 1
        lines = [f"  {layout.name + ':':<{width}} {layout.needs}" for layout in self.layouts]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    def error(self, problem: str) -> LayoutError:
        count = len(self.layouts)
        heading = (
            "Expected layout" if count == 1 else f"Expected layouts ({self.task} accepts {count}, one a line)"
        )
        return LayoutError(f"{problem}\n{heading}:\n{self.text}")


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_images_exist(paths: Sequence[ImageInput], layouts: Layouts) -> None:
    """Every path is a file (in-memory images pass)."""
    files = [p for p in paths if isinstance(p, Path)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        raise layouts.error(f"{len(missing)} of {len(paths)} image files are missing, e.g.:\n  {shown}")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def first_existing(candidates: Iterable[Path], kind: str = "file") -> Path | None:
    for candidate in candidates:
        if candidate.is_file() if kind == "file" else candidate.is_dir():
            return candidate
    return None


def decode_image(data: bytes, what: str, layouts: Layouts) -> Image.Image:
    """RGB image from encoded bytes (the same pixels, hence the same cache key, whichever layout held them)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise layouts.error(f"{what} is not a readable image ({error})") from error


class ZipImages:
    """The images inside a zip archive, found by member name, by name inside the archive's top folder or by
    file stem (``ex_0_img_0`` finds ``images/ex_0_img_0.png``)."""

    def __init__(self, path: Path, layouts: Layouts) -> None:
        self.path = path
        self.layouts = layouts
        try:
            with zipfile.ZipFile(path) as archive:
                names = [info.filename for info in archive.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise layouts.error(f"{path} is not a readable zip archive ({error})") from error
        images = [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS]
        self._by_key: dict[str, str] = {}
        for name in images:
            parts = PurePosixPath(name).parts
            for key in (name, "/".join(parts[1:]), PurePosixPath(name).name, PurePosixPath(name).stem):
                self._by_key.setdefault(key, name)
        self.count = len(images)

    def member(self, name: str) -> str | None:
        return self._by_key.get(name) or self._by_key.get(PurePosixPath(name).name)

    def load(self, names: Sequence[str]) -> list[Image.Image]:
        """Decode the named images (all checked first: a missing one fails before any is decoded)."""
        members = [self.member(n) for n in names]
        missing = [n for n, m in zip(names, members, strict=True) if m is None]
        if missing:
            raise self.layouts.error(
                f"{len(missing)} of {len(names)} images are not in {self.path} ({self.count} images there), "
                f"e.g. {missing[:5]}"
            )
        decoded: dict[str, Image.Image] = {}
        with zipfile.ZipFile(self.path) as archive:
            for member in members:
                if member is not None and member not in decoded:
                    data = archive.read(member)
                    decoded[member] = decode_image(data, f"{self.path}:{member}", self.layouts)
        return [decoded[m] for m in members if m is not None]
