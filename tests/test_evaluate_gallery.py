"""The retrieval gallery as a person sees it: the page rendered by headless Chromium (Debian's `chromium`; the test
fails when it is missing, .ci/run installs it) shows every thumbnail where it belongs and the hit frames; the
rows are the brute-force ranking of the model's own embeddings; `evaluate retrieval --gallery` writes the page."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_helpers import COCO, coco_slice, random_head_checkpoint
from PIL import Image

from evaluate.cli import main
from evaluate.gallery import (
    BORDER_PX,
    GalleryConfig,
    GalleryRow,
    Shown,
    render_gallery,
    retrieval_rows,
    write_gallery,
)
from evaluate.models import load_model

COLORS = {  # solid test images; none is close to the hit green or the miss grey
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 30),
    "magenta": (200, 40, 200),
    "cyan": (30, 200, 210),
    "orange": (240, 140, 20),
}
HIT = (0, 160, 60)
MISS = (200, 200, 200)
TOLERANCE = 24


def screenshot(page: Path, out: Path, width: int = 1300, height: int = 900) -> np.ndarray:
    """The page as headless Chromium renders it, at one device pixel per CSS pixel."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={out.parent / 'chromium-profile'}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def pixels_near(shot: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(shot - np.array(rgb)).max(axis=-1) <= TOLERANCE).sum())


def test_rendered_page_shows_every_thumbnail_and_the_hit_frames(tmp_path):
    sources = {}
    for name, rgb in COLORS.items():
        sources[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (60, 40), rgb).save(sources[name])  # not square: the thumbnail is cropped to fill

    def shown(name: str, rank: int, hit: bool) -> Shown:
        return Shown(sources[name], name, rank, 0.5 - rank / 10, hit)

    rows = [  # orange never appears
        GalleryRow(
            "a red thing", [shown("red", 1, True), shown("blue", 2, False), shown("yellow", 3, False)]
        ),
        GalleryRow("a blue thing", [shown("red", 1, False), shown("blue", 2, True), shown("cyan", 3, False)]),
        GalleryRow(
            "a magenta thing",
            [shown("cyan", 1, False), shown("yellow", 2, False), shown("red", 3, False)],
            [shown("magenta", 5, True)],
        ),
    ]
    config = GalleryConfig(queries=3, k=3)
    page = write_gallery(tmp_path / "gallery.html", render_gallery(rows, "test gallery", "synthetic", config))
    assert "<script" not in page.read_text() and 'src="data:image/jpeg;base64,' in page.read_text()
    shot = screenshot(page, tmp_path / "shot.png")

    inner = (config.thumb - 2 * BORDER_PX) ** 2  # image pixels inside one frame
    frame = config.thumb**2 - inner
    cells = [item for row in rows for item in row.results]
    truth = [item for row in rows for item in row.missed_truth]
    for name, rgb in COLORS.items():
        appearances = sum(item.label == name for item in cells + truth)
        count = pixels_near(shot, rgb)
        assert 0.9 * appearances * inner <= count <= 1.05 * appearances * inner + 200, (name, count)
    hits = sum(item.hit for item in cells)
    misses = len(cells) - hits
    green = pixels_near(shot, HIT)
    # solid frames of the hits, dashed ones of the ground truth ranked lower, the small "hit" labels
    assert 0.9 * hits * frame + 0.2 * len(truth) * frame <= green <= 1.05 * (hits + len(truth)) * frame + 600
    assert pixels_near(shot, MISS) >= 0.9 * misses * frame


def test_rows_are_the_brute_force_ranking():
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    owner = [i // 2 for i in range(24)]  # two captions per image
    texts = torch.nn.functional.normalize(
        images[owner] + 1.2 * torch.randn(24, 8, generator=generator), dim=-1
    )
    captions = [f"caption {i}" for i in range(24)]
    sources = [Image.new("RGB", (4, 4)) for _ in range(12)]
    config = GalleryConfig(queries=5, k=3)
    rows = retrieval_rows(images, texts, sources, captions, owner, config)
    assert len(rows) == 5 and rows[0].query == "caption 0" and rows[-1].query == "caption 22"
    for row in rows:
        caption = captions.index(row.query)
        scores = images.double().numpy() @ texts[caption].double().numpy()
        order = np.argsort(-scores, kind="stable")
        assert [item.rank for item in row.results] == [1, 2, 3]
        assert [item.label for item in row.results] == [f"image {i}" for i in order[:3]]
        assert all(item.source is sources[int(item.label.split()[1])] for item in row.results)
        assert [item.hit for item in row.results] == [i == owner[caption] for i in order[:3]]
        np.testing.assert_allclose([item.score for item in row.results], scores[order[:3]])
        truth_rank = int(np.where(order == owner[caption])[0][0]) + 1
        expected_missed = [] if truth_rank <= 3 else [truth_rank]
        assert [item.rank for item in row.missed_truth] == expected_missed


class _Cells(HTMLParser):
    """Query texts and the (image, rank, kind) of each shown image, per row, from the page's markup."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self._in_query = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "row" in classes:
            self.rows.append({"query": "", "cells": []})
        elif "query" in classes:
            self._in_query = True
        elif "cell" in classes:
            self.rows[-1]["cells"].append((attrs["data-image"], int(attrs["data-rank"]), classes[1]))

    def handle_endtag(self, tag):
        self._in_query = False

    def handle_data(self, data):
        if self._in_query:
            self.rows[-1]["query"] += data


def test_evaluate_retrieval_writes_the_gallery(tmp_path):
    checkpoint = random_head_checkpoint(tmp_path / "ckpt", seed=3)
    annotations, image_root = coco_slice(tmp_path / "coco", n_images=8)
    gallery = tmp_path / "out" / "gallery.html"
    argv = [
        "retrieval",
        "--model",
        str(checkpoint),
        "--data",
        str(annotations),
        "--image-root",
        str(image_root),
    ]
    argv += ["--output", str(tmp_path / "result.json"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--gallery", str(gallery), "--gallery-queries", "4", "--gallery-k", "3"]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["task"] == "retrieval"
    text = gallery.read_text()
    assert "http" not in text.replace("http://www.w3.org", "") and len(text) < 400_000

    payload = json.loads(annotations.read_text())
    names = {im["id"]: im["file_name"] for im in payload["images"]}
    files = [names[i] for i in sorted(names)]
    owner_of = {a["caption"]: names[a["image_id"]] for a in payload["annotations"]}
    model = load_model(str(checkpoint))
    image_emb = (
        model.encode_image([Image.open(image_root / f).convert("RGB") for f in files]).double().numpy()
    )
    parsed = _Cells()
    parsed.feed(text)
    assert len(parsed.rows) == 4
    for row in parsed.rows:
        query = row["query"]
        scores = image_emb @ model.encode_text([query]).double().numpy()[0]
        order = np.argsort(-scores, kind="stable")
        top = [
            (files[i], rank, "hit" if files[i] == owner_of[query] else "miss")
            for rank, i in enumerate(order[:3], 1)
        ]
        assert row["cells"][:3] == top
        truth_rank = [files[i] for i in order].index(owner_of[query]) + 1
        assert row["cells"][3:] == ([] if truth_rank <= 3 else [(owner_of[query], truth_rank, "truth")])

    shot = screenshot(gallery, tmp_path / "shot.png")
    photo = np.abs(shot - 255).max(axis=-1) > 40
    assert photo.mean() > 0.05  # not a blank page: 4 rows of 4 photos (about 12% of the window)
    assert len(np.unique(shot[photo] // 16, axis=0)) > 300  # photographs, not flat boxes

    assert main([*argv, "--gallery", str(tmp_path)]) == 2  # a folder: refused before any work
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gallery.html"]  # no temporary file left
    assert COCO.is_dir()
