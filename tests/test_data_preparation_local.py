"""Data already on disk (caption table, COCO JSON), the image checks and bad input; no download, no network."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data_preparation.checks import ImageChecks, check_image_bytes
from data_preparation.cli import main
from data_preparation.tables import DREAMLIP_CAPTION_COLUMNS
from tests.data_preparation_helpers import COCO_MINI, caption_table


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_checks_name_the_reason_and_accept_real_images() -> None:
    checks = ImageChecks(min_image_size=32, max_aspect_ratio=4.0)
    real = sorted((COCO_MINI / "val2017").glob("*.jpg"))[0].read_bytes()
    assert check_image_bytes(real, checks) is None
    assert check_image_bytes(real[: len(real) * 3 // 4], checks).reason == "truncated"
    assert check_image_bytes(b"\xff\xd8\xff" + b"\x00" * 50, checks).reason == "undecodable"
    assert check_image_bytes(b"GIF89a nonsense", checks).reason == "undecodable"
    assert check_image_bytes(_png((31, 100)), checks).reason == "too_small"
    assert check_image_bytes(_png((32, 128)), checks) is None  # exactly at both limits
    assert check_image_bytes(_png((32, 129)), checks).reason == "extreme_aspect"
    with pytest.raises(ValueError, match="min_image_size"):
        ImageChecks(min_image_size=0)


def test_from_local_filters_and_writes_relative_manifest(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    sources = sorted((COCO_MINI / "train2017").glob("*.jpg"))[:4]
    names = []
    for i, source in enumerate(sources[:3]):
        name = f"sub/img{i}.jpg" if i == 0 else f"img{i}.jpg"
        (images / name).write_bytes(source.read_bytes())
        names.append(name)
    data = sources[3].read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 3])
    (images / "small.png").write_bytes(_png((16, 16)))
    names += ["cut.jpg", "small.png", "absent.jpg", "img1.jpg"]  # the last repeats an image
    table = pd.DataFrame({"image": names})
    for column in ("raw_caption", "longLLA_captions"):
        table[column] = [f"{column} {i}" for i in range(len(names))]
    table.to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "prepared"

    assert main(["from-local", "--table", str(tmp_path / "table.csv"), "--image-root", str(images),
                 "--out", str(out), "--threads", "2"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert (report["rows"], report["kept"]) == (7, 3)
    assert report["rejected"]["truncated"] == 1 and report["rejected"]["too_small"] == 1
    assert report["rejected"]["missing_file"] == 1 and report["rejected"]["duplicate"] == 1
    assert report["rejected_examples"]["missing_file"] == ["absent"]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["key"].tolist() == ["sub/img0", "img1", "img2"]
    assert manifest["raw_caption"].tolist() == ["raw_caption 0", "raw_caption 1", "raw_caption 2"]
    assert manifest["longLLA_captions"].tolist() == [
        "longLLA_captions 0",
        "longLLA_captions 1",
        "longLLA_captions 2",
    ]
    for row, source in zip(manifest.itertuples(), sources, strict=False):
        assert not os.path.isabs(row.image)
        assert (out / row.image).read_bytes() == source.read_bytes()

    from encode.inputs import load_rows

    rows = load_rows(out, caption_columns=["raw_caption"])
    assert rows.keys == manifest["key"].tolist()
    assert [Path(p).resolve() for p in rows.images] == [(images / n).resolve() for n in names[:3]]


def test_from_coco_keeps_every_caption_by_image(tmp_path: Path) -> None:
    annotations = COCO_MINI / "annotations" / "captions_val2017.json"
    out = tmp_path / "coco"
    assert main(["from-coco", "--annotations", str(annotations), "--out", str(out), "--threads", "2"]) == 0
    content = json.loads(annotations.read_text())
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["key"].tolist() == [str(image["id"]) for image in content["images"]]
    expected = {}
    for annotation in sorted(content["annotations"], key=lambda a: a["id"]):
        expected.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    assert {k: list(v) for k, v in zip(manifest["key"], manifest["caption"], strict=True)} == expected
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == report["rows"] == len(content["images"])

    from encode.inputs import load_rows

    rows = load_rows(out, caption_columns=["caption"])
    assert len(rows.caption_rows("caption")) == len(content["annotations"])
    assert all(Path(p).is_file() for p in rows.images)


def _prepare(tmp_path: Path, table: pd.DataFrame, *extra: str) -> list[str]:
    table.to_csv(tmp_path / "t.csv", index=False)
    return ["prepare", "--table", str(tmp_path / "t.csv"), "--url-column", "url", "--out", str(tmp_path / "out"),
            *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        (lambda t: t.drop(columns=["url"]), (), "--url-column url"),
        (lambda t: t, ("--key-column", "nope"), "--key-column nope"),
        (lambda t: t.drop(columns=list(DREAMLIP_CAPTION_COLUMNS)), (), "--caption-columns"),
        (lambda t: t, ("--caption-columns", "raw_caption,missing"), "missing"),
        (lambda t: t.assign(sample_id="same"), ("--key-column", "sample_id"), "must be unique"),
        (
            lambda t: t.assign(sample_id="a.b"),
            ("--key-column", "sample_id", "--output-format", "webdataset"),
            "'.'",
        ),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path: Path, capsys, change, extra, message) -> None:
    table = change(caption_table("http://127.0.0.1:9", {"a.jpg": "kept", "b.jpg": "kept"}))
    if "sample_id" in table and table["sample_id"].iloc[0] == "a.b":
        table = table.iloc[:1]
    assert main(_prepare(tmp_path, table, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_table_and_existing_output(tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "prepare",
                "--table",
                str(tmp_path / "none.csv"),
                "--url-column",
                "url",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["from-coco", "--annotations", str(COCO_MINI / "annotations" / "instances_val2017.json"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "no captions" in capsys.readouterr().err
    out = tmp_path / "coco"
    annotations = str(COCO_MINI / "annotations" / "captions_val2017.json")
    assert (
        main(["from-coco", "--annotations", annotations, "--out", str(out), "--min-image-size", "1000"]) == 0
    )
    assert json.loads((out / "report.json").read_text())["kept"] == 0
    assert main(["from-coco", "--annotations", annotations, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["from-coco", "--annotations", annotations, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["kept"] == 79


def test_uninstalled_distributor_is_refused_before_work(tmp_path: Path, capsys, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    table = caption_table("http://127.0.0.1:9", {"a.jpg": "kept"})
    assert main(_prepare(tmp_path, table, "--distributor", "ray")) == 2
    assert "pip install ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
