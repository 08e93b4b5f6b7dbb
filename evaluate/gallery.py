"""A static HTML page of what a model retrieves: text queries with their top-k images, hits marked.

Each query row shows the caption, its k best images (rank, score; the caption's own image, the ground truth, has a
solid green frame and a "hit" label), then, when the ground truth is not among them, that image with a dashed
green frame, a "truth" label and its rank. Thumbnails are embedded as small JPEG data URIs (``thumb`` px on the longest side, about 3 to 6 KB
each), so the page is one self-contained file; it has no script.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.distributed import rank_and_world
from core.staging import write_text_atomic
from evaluate.encoding import ImageSource, encode_images, encode_texts, open_image

HIT_COLOR = "#00a03c"
MISS_COLOR = "#c8c8c8"
BORDER_PX = 5


@dataclass(frozen=True)
class GalleryConfig:
    """How much the page shows; recorded in the page's header."""

    queries: int = 24
    k: int = 5
    thumb: int = 112  # thumbnail box side in CSS px (images are cropped to fill it)
    quality: int = 80  # JPEG quality of the embedded thumbnails

    def __post_init__(self) -> None:
        if self.queries < 1 or self.k < 1 or self.thumb < 16 or not 1 <= self.quality <= 95:
            raise ValueError(
                f"gallery settings out of range: queries {self.queries} and k {self.k} must be >= 1, thumb "
                f"{self.thumb} >= 16 px, quality {self.quality} in 1..95"
            )


@dataclass(frozen=True)
class Shown:
    """One image shown for a query."""

    source: ImageSource
    label: str
    rank: int
    score: float
    hit: bool


@dataclass
class GalleryRow:
    query: str
    results: list[Shown]
    missed_truth: list[Shown] = field(default_factory=list)  # ground-truth images ranked below k


def image_label(source: ImageSource, index: int) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else f"image {index}"


def retrieval_rows(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    sources: Sequence[ImageSource],
    captions: Sequence[str],
    caption_image: Sequence[int],
    config: GalleryConfig,
) -> list[GalleryRow]:
    """Text->image rows: the first caption of ``config.queries`` images spread evenly over the set, each with its
    ``k`` best images by cosine similarity (float64; ties keep the lower image index first)."""
    first_caption: dict[int, int] = {}
    for caption, owner in enumerate(caption_image):
        first_caption.setdefault(int(owner), caption)
    owners = sorted(first_caption)
    count = min(config.queries, len(owners))
    picks = [owners[round(i * (len(owners) - 1) / max(count - 1, 1))] for i in range(count)]
    images = image_embeddings.double()
    rows = []
    for owner in dict.fromkeys(picks):
        caption = first_caption[owner]
        scores = images @ text_embeddings[caption].double()
        order = torch.sort(-scores, stable=True).indices.tolist()
        rank_of = {image: rank for rank, image in enumerate(order, start=1)}
        truth = {owner}  # the caption's own image, the positive of the retrieval metrics

        def shown(image: int, scores=scores, rank_of=rank_of, truth=truth) -> Shown:
            return Shown(
                sources[image],
                image_label(sources[image], image),
                rank_of[image],
                float(scores[image]),
                image in truth,
            )

        top = [shown(image) for image in order[: config.k]]
        missed = [shown(image) for image in sorted(truth, key=rank_of.get) if rank_of[image] > config.k]
        rows.append(GalleryRow(captions[caption], top, missed))
    return rows


def _data_uri(source: ImageSource, config: GalleryConfig) -> str:
    image = open_image(source)
    image.thumbnail((config.thumb * 2, config.thumb * 2))  # room for the crop to fill the box
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((config.thumb, config.thumb))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _style(config: GalleryConfig) -> str:
    t = config.thumb
    return (
        "body{font-family:sans-serif;margin:16px;background:#fff;color:#222}"
        "h1{font-size:20px;margin:0 0 4px}p.meta{font-size:13px;color:#555;margin:0 0 14px}"
        ".row{display:flex;align-items:flex-start;gap:8px;margin:0 0 12px;padding-top:8px;"
        "border-top:1px solid #eee}"
        ".query{flex:none;width:240px;font-size:14px;line-height:1.3}"
        f".cell{{flex:none;width:{t}px;font-size:11px;text-align:center;color:#555}}"
        f".cell img{{display:block;width:{t}px;height:{t}px;box-sizing:border-box;object-fit:cover;"
        f"border:{BORDER_PX}px solid {MISS_COLOR}}}"
        f".cell.hit img{{border-color:{HIT_COLOR}}}.cell.truth img{{border:{BORDER_PX}px dashed {HIT_COLOR}}}"
        f".mark{{color:{HIT_COLOR};font-weight:bold}}.gap{{flex:none;width:14px}}"
    )


def _cell(item: Shown, uri: str, kind: str) -> str:
    mark = f'<span class="mark">{"truth" if kind == "truth" else "hit"}</span> ' if item.hit else ""
    title = html.escape(item.label)
    return (
        f'<div class="cell {kind}" data-image="{title}" data-rank="{item.rank}" data-score="{item.score:.6f}">'
        f'<img src="{uri}" alt="{title}" title="{title}"><div>{mark}#{item.rank} {item.score:+.3f}</div></div>'
    )


def render_gallery(rows: Sequence[GalleryRow], title: str, subtitle: str, config: GalleryConfig) -> str:
    """The page as one HTML string (thumbnails embedded)."""
    uris: dict[tuple[str, object], str] = {}

    def uri(item: Shown) -> str:
        path_like = isinstance(item.source, (str, os.PathLike))
        key = ("path", str(item.source)) if path_like else ("image", id(item.source))
        if key not in uris:
            uris[key] = _data_uri(item.source, config)
        return uris[key]

    body = []
    for row in rows:
        cells = [_cell(item, uri(item), "hit" if item.hit else "miss") for item in row.results]
        if row.missed_truth:
            cells.append('<div class="gap"></div>')
            cells += [_cell(item, uri(item), "truth") for item in row.missed_truth]
        body.append(
            f'<div class="row"><div class="query">{html.escape(row.query)}</div>{"".join(cells)}</div>'
        )
    hits = sum(any(item.hit for item in row.results) for row in rows)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_style(config)}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(subtitle)} · {len(rows)} text queries, '
        f"top {config.k} images each; {hits} with a ground-truth image in the top {config.k} (solid green "
        "frame); a dashed frame shows a ground-truth image ranked lower</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_gallery(path: str | os.PathLike, page: str) -> Path:
    """Write the page atomically (a temporary file beside it, renamed into place)."""
    return write_text_atomic(path, page)


def check_gallery_path(path: str | os.PathLike | None) -> None:
    """Refuse a ``--gallery`` path that cannot be written, before any work."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--gallery {path} is a directory; give a file name ending in .html")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--gallery {path}: its folder cannot be created or written")


def retrieval_gallery(
    model, data, enc, path: str | os.PathLike, config: GalleryConfig, title: str
) -> Path | None:
    """Embed the retrieval data (through ``enc``'s feature cache, so after the task's own run it costs cache
    hits) and write the page; under torchrun every rank encodes its shard and rank 0 writes."""
    images = encode_images(model, data.images, enc.cache, enc.batch_size, enc.workers)
    texts = encode_texts(model, data.captions, enc.cache, enc.batch_size, desc="captions")
    if rank_and_world(_group())[0] != 0:
        return None
    rows = retrieval_rows(images, texts, data.images, data.captions, data.caption_image, config)
    subtitle = f"{data.name} ({data.split}): {len(data.images)} images, {len(data.captions)} captions"
    return write_gallery(path, render_gallery(rows, title, subtitle, config))


def _group():
    import torch.distributed as dist

    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
