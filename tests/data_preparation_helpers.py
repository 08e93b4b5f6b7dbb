"""Fixtures for the data_preparation tests: a loopback HTTP server and DreamLIP-style caption tables.

Everything is served from 127.0.0.1 on an ephemeral port by ``http.server`` in a thread; nothing leaves the machine.
"""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from PIL import Image

from data_preparation.tables import DREAMLIP_CAPTION_COLUMNS

COCO_MINI = Path("../shared/data/coco-mini")
GOOD_IMAGES = 6


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (ephemeral port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _encoded(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


def make_site(folder: Path) -> dict[str, str]:
    """Files to serve, by the outcome each must get: real COCO images and one file per rejection reason."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((COCO_MINI / "train2017").glob("*.jpg"))[: GOOD_IMAGES + 1]
    outcomes = {}
    for source in sources[:GOOD_IMAGES]:
        shutil.copyfile(source, folder / source.name)
        outcomes[source.name] = "kept"
    data = sources[GOOD_IMAGES].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "garbage.jpg").write_bytes(b"<html>not an image</html>" * 20)
    (folder / "tiny.jpg").write_bytes(_encoded((8, 8)))
    (folder / "strip.png").write_bytes(_encoded((640, 40), "PNG"))
    outcomes.update(
        {
            "truncated.jpg": "truncated",
            "garbage.jpg": "undecodable",
            "tiny.jpg": "too_small",
            "strip.png": "extreme_aspect",
            "missing-1.jpg": "download_failed",
            "missing-2.jpg": "download_failed",
        }
    )
    return outcomes


def caption_table(
    base_url: str, outcomes: dict[str, str], key_column: str | None = "sample_id"
) -> pd.DataFrame:
    """One DreamLIP-style row per served name (404s included), every caption column distinct per row."""
    rows = []
    for i, name in enumerate(outcomes):
        row = {"url": f"{base_url}/{name}", "expected": outcomes[name]}
        if key_column is not None:
            row[key_column] = f"id{i:03d}"
        for column in DREAMLIP_CAPTION_COLUMNS:
            row[column] = f"{column} of {name}"
        rows.append(row)
    return pd.DataFrame(rows)
