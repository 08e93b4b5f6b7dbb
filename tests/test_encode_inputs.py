"""Every input format `encode` reads, built from real COCO-MINI images and captions, and every input error."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from encode.inputs import InputError, TarMember, load_rows
from encode.pipeline import read_image
from tests.encode_pipeline_helpers import (
    COCO,
    coco_sample,
    copy_images,
    manifest_frame,
    write_coco_subset,
    write_manifest,
    write_webdataset,
)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_manifest_tables_keep_keys_paths_and_captions(tmp_path, suffix):
    frame = manifest_frame(4)
    path = write_manifest(tmp_path / f"pairs{suffix}", frame)
    rows = load_rows(path, tmp_path / "root", caption_columns=["raw_caption", "long_caption"])
    assert rows.format == "manifest" and rows.source == str(path)
    assert rows.keys == ["00000", "00001", "00002", "00003"]  # leading zeros survive every format
    assert rows.images == [str(tmp_path / "root" / p) for p in frame["image"]]
    raw = rows.caption_rows("raw_caption")
    assert raw.keys == [f"{k}#raw_caption" for k in rows.keys]
    assert raw.image_keys == rows.keys
    assert raw.texts == frame["raw_caption"].tolist()
    assert rows.caption_rows("long_caption").texts == frame["long_caption"].tolist()


def test_manifest_image_root_defaults_to_its_folder_and_columns_are_configurable(tmp_path):
    frame = manifest_frame(2).rename(columns={"key": "id", "image": "path", "raw_caption": "text"})
    path = write_manifest(tmp_path / "m.csv", frame)
    rows = load_rows(path, key_column="id", image_column="path", caption_columns=["text"])
    assert rows.images == [str(tmp_path / p) for p in frame["path"]]
    assert rows.caption_rows("text").texts == frame["text"].tolist()


def test_folder_with_manifest_reads_images_relative_to_it(tmp_path):
    frame = manifest_frame(3)
    write_manifest(tmp_path / "manifest.parquet", frame)
    copy_images(frame, tmp_path)
    (tmp_path / "00000.tar").write_bytes(b"")  # a manifest wins over anything else in the folder
    rows = load_rows(tmp_path)
    assert rows.format == "manifest"
    assert rows.keys == frame["key"].tolist()
    for ref, name in zip(rows.images, frame["image"], strict=True):
        assert ref == str(tmp_path / name)
        assert read_image(ref).size == read_image(COCO / "train2017" / name.split("/")[-1]).size


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_list_cells_give_one_caption_row_each_and_blank_captions_stay_rows(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "key": ["a", "b", "c"],
            "image": ["a.jpg", "b.jpg", "c.jpg"],
            "shortSV_captions": [["a dog", "a brown dog"], [], ["", "cat"]],
            "raw_caption": ["x", None, "  "],
        }
    )
    path = write_manifest(tmp_path / f"m{suffix}", frame)
    rows = load_rows(path, caption_columns=["shortSV_captions", "raw_caption"])
    short = rows.caption_rows("shortSV_captions")
    assert short.keys == [
        "a#shortSV_captions#0",
        "a#shortSV_captions#1",
        "b#shortSV_captions",
        "c#shortSV_captions#0",
        "c#shortSV_captions#1",
    ]
    assert short.image_keys == ["a", "a", "b", "c", "c"]
    assert short.texts == ["a dog", "a brown dog", "", "", "cat"]
    raw = rows.caption_rows("raw_caption")
    assert raw.keys == ["a#raw_caption", "b#raw_caption", "c#raw_caption"]
    assert raw.texts == ["x", "", "  "]


def test_text_runs_do_not_need_an_image_column(tmp_path):
    frame = manifest_frame(2).drop(columns=["image"])
    path = write_manifest(tmp_path / "m.csv", frame)
    rows = load_rows(path, caption_columns=["raw_caption"], need_images=False)
    assert rows.images == [None, None]
    with pytest.raises(InputError, match=r"lacks column\(s\) \['image'\].*--image-column"):
        load_rows(path)


def test_coco_captions_json(tmp_path):
    path = write_coco_subset(tmp_path / "coco", 3)
    images, captions = coco_sample(3)
    rows = load_rows(path, caption_columns=["caption"])  # image root found from COCO's layout
    assert rows.format == "coco"
    assert rows.keys == [str(image["id"]) for image in images]
    assert rows.images == [str(tmp_path / "coco" / "train2017" / image["file_name"]) for image in images]
    caps = rows.caption_rows("caption")
    expected = [a for image in images for a in captions[image["id"]]]
    assert len(caps) == 15
    assert caps.keys == [str(a["id"]) for a in expected]
    assert caps.image_keys == [str(a["image_id"]) for a in expected]
    assert caps.texts == [a["caption"] for a in expected]
    other_root = load_rows(path, tmp_path / "elsewhere")
    assert other_root.images[0] == str(tmp_path / "elsewhere" / images[0]["file_name"])


def test_coco_errors(tmp_path):
    path = write_coco_subset(tmp_path / "coco", 1)
    with pytest.raises(InputError, match="one caption column, 'caption'"):
        load_rows(path, caption_columns=["raw_caption"])
    moved = tmp_path / "captions_val2017.json"
    path.rename(moved)
    with pytest.raises(InputError, match="no image folder found.*--image-root"):
        load_rows(moved)
    assert len(load_rows(moved, caption_columns=["caption"], need_images=False).caption_rows("caption")) == 5
    instances = tmp_path / "instances.json"
    instances.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg"}],
                "annotations": [{"id": 2, "image_id": 1, "bbox": []}],
            }
        )
    )
    with pytest.raises(InputError, match="no captions"):
        load_rows(instances, tmp_path, caption_columns=["caption"])
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(InputError, match="cannot read COCO captions file"):
        load_rows(tmp_path / "broken.json", tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="not a COCO captions file"):
        load_rows(tmp_path / "list.json", tmp_path)


def test_image_folder_tree_and_flat_folder(tmp_path):
    names = sorted(p.name for p in (COCO / "train2017").iterdir())[:3]
    for cls, name in zip(["n01", "n01", "n02"], names, strict=True):
        (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / cls / name).write_bytes((COCO / "train2017" / name).read_bytes())
    (tmp_path / "tree" / "n02" / "notes.txt").write_text("not an image")
    rows = load_rows(tmp_path / "tree")
    assert rows.format == "imagefolder"
    assert rows.keys == [f"n01/{names[0][:-4]}", f"n01/{names[1][:-4]}", f"n02/{names[2][:-4]}"]
    assert rows.images[2] == str(tmp_path / "tree" / "n02" / names[2])
    flat = load_rows(COCO / "train2017")
    assert len(flat) == 80 and flat.keys[0] == names[0][:-4]
    with pytest.raises(InputError, match="--image-root applies to manifests and COCO"):
        load_rows(tmp_path / "tree", tmp_path)
    with pytest.raises(InputError, match="no captions"):
        load_rows(tmp_path / "tree", caption_columns=["caption"])


def test_webdataset_shards_as_img2dataset_writes_them(tmp_path):
    samples = write_webdataset(tmp_path / "wds", 5, per_shard=2)
    (tmp_path / "wds" / "00000_stats.json").write_text("{}")  # img2dataset's side files are ignored
    rows = load_rows(tmp_path / "wds", caption_columns=["caption", "txt", "shortSV_captions"])
    assert rows.format == "webdataset"
    assert (
        rows.keys
        == [s["key"] for s in samples]
        == ["000000000", "000000001", "000010000", "000010001", "000020000"]
    )
    for ref, sample in zip(rows.images, samples, strict=True):
        assert isinstance(ref, TarMember)
        original = read_image(COCO / "train2017" / sample["file_name"])
        assert np.array_equal(np.asarray(read_image(ref)), np.asarray(original))
    assert rows.caption_rows("caption").texts == [s["caption"] for s in samples]
    assert rows.caption_rows("txt").texts == [s["caption"] for s in samples]
    short = rows.caption_rows("shortSV_captions")
    assert short.texts == [s["shortSV_captions"] for s in samples]
    assert short.keys == [f"{s['key']}#shortSV_captions" for s in samples]
    one = load_rows(tmp_path / "wds" / "00001.tar")
    assert one.keys == ["000010000", "000010001"]
    with pytest.raises(InputError, match="no caption column 'longSV_captions'.*shortSV_captions"):
        load_rows(tmp_path / "wds", caption_columns=["longSV_captions"])


def test_webdataset_without_json_uses_txt_for_caption(tmp_path):
    image = (COCO / "train2017" / sorted(p.name for p in (COCO / "train2017").iterdir())[0]).read_bytes()
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in [("s1.jpg", image), ("s1.txt", b"a caption"), ("s2.jpg", image)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = load_rows(tmp_path, caption_columns=["caption"])
    assert rows.keys == ["s1", "s2"]
    assert rows.caption_rows("caption").texts == ["a caption", ""]


def test_input_errors_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_rows(tmp_path / "nope.csv")
    write_manifest(tmp_path / "m.csv", manifest_frame(2))
    with pytest.raises(
        InputError, match=r"lacks column\(s\) \['shortSV'\].*its columns are \['key', 'image'"
    ):
        load_rows(tmp_path / "m.csv", caption_columns=["shortSV"])
    with pytest.raises(InputError, match=r"\['id'\] \(--key-column id\)"):
        load_rows(tmp_path / "m.csv", key_column="id")
    (tmp_path / "header.csv").write_text("key,image\n")
    with pytest.raises(InputError, match="no rows: the input is empty"):
        load_rows(tmp_path / "header.csv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_rows(tmp_path / "empty.tsv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="cannot read manifest .*bad.parquet"):
        load_rows(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"key": "a"}\n{"key": \n')
    with pytest.raises(InputError, match="cannot read manifest .*bad.jsonl"):
        load_rows(tmp_path / "bad.jsonl")
    (tmp_path / "latin.csv").write_bytes(b"key,image\n\xff\xfe,\x80.jpg\n")
    with pytest.raises(InputError, match="cannot read manifest"):
        load_rows(tmp_path / "latin.csv")
    (tmp_path / "dupes.csv").write_text("key,image\na,1.jpg\na,2.jpg\n")
    with pytest.raises(InputError, match=r"must be unique; duplicated: \['a'\]"):
        load_rows(tmp_path / "dupes.csv")
    (tmp_path / "nokey.csv").write_text("key,image\na,1.jpg\n,2.jpg\n")
    with pytest.raises(InputError, match="row 1 has no 'key'"):
        load_rows(tmp_path / "nokey.csv")
    (tmp_path / "data.xlsx").write_text("")
    with pytest.raises(InputError, match="unknown input type"):
        load_rows(tmp_path / "data.xlsx")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="the input is empty"):
        load_rows(tmp_path / "empty_dir")
    (tmp_path / "two").mkdir()
    write_manifest(tmp_path / "two" / "manifest.csv", manifest_frame(1))
    write_manifest(tmp_path / "two" / "manifest.jsonl", manifest_frame(1))
    with pytest.raises(InputError, match="several manifests"):
        load_rows(tmp_path / "two")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "00000.tar").write_bytes(b"not a tar file at all" * 50)
    with pytest.raises(InputError, match="cannot read WebDataset shard"):
        load_rows(tmp_path / "broken")
