"""End to end, offline: img2dataset downloads from a loopback server, we filter, encode reads the result."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data_preparation.cli import main
from data_preparation.tables import DREAMLIP_CAPTION_COLUMNS, url_key
from tests.data_preparation_helpers import caption_table, make_site, serve


def _expected_counts(table: pd.DataFrame) -> Counter:
    return Counter(table["expected"])


@pytest.mark.slow
def test_prepare_files_keeps_keys_and_captions_and_encode_reads_it(tmp_path: Path) -> None:
    outcomes = make_site(tmp_path / "site")
    out = tmp_path / "prepared"
    with serve(tmp_path / "site") as base_url:
        table = caption_table(base_url, outcomes, key_column="sample_id")
        table.to_csv(tmp_path / "captions.csv", index=False)
        code = main(
            ["prepare", "--table", str(tmp_path / "captions.csv"), "--url-column", "url", "--key-column",
             "sample_id", "--out", str(out), "--processes", "1", "--threads", "4", "--timeout", "5"]
        )  # fmt: skip
    assert code == 0

    report = json.loads((out / "report.json").read_text())
    expected = _expected_counts(table)
    assert report["rows"] == len(table)
    assert report["kept"] == expected["kept"] == 6
    for reason in ("download_failed", "truncated", "undecodable", "too_small", "extreme_aspect"):
        assert report["rejected"][reason] == expected[reason], reason
        wanted = sorted(table.loc[table["expected"] == reason, "sample_id"])
        assert sorted(report["rejected_examples"][reason]) == wanted, reason
    assert sum(report["rejected"].values()) + report["kept"] == report["rows"]
    assert "HTTP Error 404" in next(iter(report["rejected_details"]["download_failed"]))
    # img2dataset's own accounting agrees: 404s failed to download, our checks' rejections failed to resize.
    assert report["img2dataset"] == {
        "shards": 1,
        "count": len(table),
        "successes": 6,
        "failed_to_download": 2,
        "failed_to_resize": 4,
    }

    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest.columns[:2]) == ["key", "image"]
    kept = table[table["expected"] == "kept"].set_index("sample_id")
    assert sorted(manifest["key"]) == sorted(kept.index)
    for row in manifest.itertuples(index=False):
        source = kept.loc[row.key]
        for column in DREAMLIP_CAPTION_COLUMNS:
            assert getattr(row, column) == source[column]
        # No --image-size: the JPEG bytes are kept exactly as served.
        served = tmp_path / "site" / source["url"].rsplit("/", 1)[1]
        assert (out / row.image).read_bytes() == served.read_bytes()
    saved = json.loads((out / "prepare_config.json").read_text())
    assert saved["caption_columns"] == list(DREAMLIP_CAPTION_COLUMNS)
    assert not (out / "_work").exists()

    _run_encode(
        ["image", "--model", "efficientnet-lite0", "--data", str(out), "--out", str(tmp_path / "i.h5")]
    )
    _run_encode(
        ["text", "--model", "all-MiniLM-L6-v2", "--data", str(out), "--caption-column", "raw_caption",
         "--out", str(tmp_path / "t.h5")]
    )  # fmt: skip
    from encode.store import FeatureStore

    images, texts = FeatureStore(tmp_path / "i.h5"), FeatureStore(tmp_path / "t.h5")
    assert list(images.keys) == list(manifest["key"]) and images.valid.all()
    assert list(texts.image_keys) == list(manifest["key"]) and texts.valid.all()
    assert list(texts.keys) == [f"{k}#raw_caption" for k in manifest["key"]]


def _run_encode(args: list[str]) -> None:
    """``python -m encode ...``, run in this process (the same CLI entry point, without a second torch import)."""
    from encode.__main__ import main as encode_main

    assert encode_main([*args, "--num-workers", "0", "--batch-size", "8"]) == 0


@pytest.mark.slow
def test_prepare_webdataset_resized_derived_keys_and_resume(tmp_path: Path) -> None:
    outcomes = make_site(tmp_path / "site")
    out = tmp_path / "shards"
    with serve(tmp_path / "site") as base_url:
        table = caption_table(base_url, outcomes, key_column=None)
        table = pd.concat([table, table.iloc[[0]]], ignore_index=True)  # a repeated URL
        table.to_parquet(tmp_path / "captions.parquet", index=False)
        args = ["prepare", "--table", str(tmp_path / "captions.parquet"), "--url-column", "url", "--out", str(out),
                "--output-format", "webdataset", "--image-size", "64", "--shard-size", "4", "--processes", "1",
                "--threads", "2", "--caption-columns", "raw_caption,longSV_captions"]  # fmt: skip
        assert main(args) == 0
        report = json.loads((out / "report.json").read_text())
        # Resume after a crash: the last shard and the report are gone; only that shard is downloaded again.
        (out / "report.json").unlink()
        (out / "_download" / "00002_stats.json").unlink()
        (out / "00002.tar").unlink()
        first_shard = (out / "00000.tar").stat().st_mtime_ns
        assert main([*args, "--resume"]) == 0
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "00000.tar").stat().st_mtime_ns == first_shard

    assert report["rejected"]["duplicate"] == 1
    assert report["img2dataset"]["shards"] == 3 and report["img2dataset"]["count"] == len(table) - 1
    assert report["kept"] == 6
    kept = table[table["expected"] == "kept"].drop_duplicates("url")
    want = {url_key(u): row for u, row in zip(kept["url"], kept.to_dict("records"), strict=True)}
    seen = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                seen.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert sorted(seen) == sorted(want)
    for key, sample in seen.items():
        fields = json.loads(sample["json"])
        assert fields["key"] == key
        assert fields["raw_caption"] == want[key]["raw_caption"]
        assert fields["longSV_captions"] == want[key]["longSV_captions"]
        assert "shortIB_captions" not in fields
        assert sample["txt"].decode() == want[key]["raw_caption"]
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert min(image.size) == 64  # keep_ratio: shorter side = --image-size

    from encode.inputs import load_rows

    rows = load_rows(out, caption_columns=["raw_caption"])
    assert sorted(rows.keys) == sorted(want)
    captions = rows.caption_rows("raw_caption")
    assert dict(zip(captions.image_keys, captions.texts, strict=True)) == {
        k: r["raw_caption"] for k, r in want.items()
    }


@pytest.mark.parametrize("flag", [None, "--overwrite"])
def test_existing_foreign_out_is_refused_before_work(tmp_path: Path, flag: str | None, capsys) -> None:
    table = caption_table("http://127.0.0.1:9", {"a.jpg": "kept"})
    table.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    argv = ["prepare", "--table", str(tmp_path / "t.csv"), "--url-column", "url", "--out", str(out)]
    assert main(argv + ([flag] if flag else [])) == 2
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert "error:" in capsys.readouterr().err
