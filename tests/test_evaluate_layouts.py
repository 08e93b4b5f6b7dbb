"""The benchmarks in the layouts users download them in, each built in the test from the real sample images
(../shared/data): Winoground's hub files (examples.jsonl + images.zip read in place) and parquet, ImageNet val
flat with the devkit's ground truth (txt + meta.mat, the tarball, torchvision's meta.bin) or Kaggle's
LOC_val_solution.csv, the Flickr30k CSV of nlphuji/flickr30k and Karpathy's COCO 2014 JSON. Also: every layout
error lists the accepted layouts, and published numbers go only beside results of the benchmark's size."""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate_helpers import FakeModel, use_fake_checkpoints
from PIL import Image

from evaluate import references
from evaluate.cli import main
from evaluate.datasets import LayoutError, load_imagefolder, load_retrieval, load_winoground
from evaluate.layouts import catalog
from evaluate.layouts.base import Layouts
from evaluate.results import EvalResult

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = SHARED / "coco-mini"
IMAGENET = SHARED / "imagenet-sample"
WNIDS = (IMAGENET / "wnids.txt").read_text().split() if (IMAGENET / "wnids.txt").is_file() else []


@pytest.fixture(autouse=True)
def _sample_data() -> None:
    if not (COCO / "val2017").is_dir() or len(WNIDS) != 1000 or len(VAL_CLASSES) != 6:
        pytest.fail(f"sample data missing at {SHARED} (../shared/data relative to the repository root)")


def _run(tmp_path: Path, argv: list[str]) -> EvalResult:
    out = tmp_path / "result.json"
    assert main([*argv, "--output", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    return EvalResult.load(out)


def _pixels(image: Image.Image | Path) -> np.ndarray:
    if isinstance(image, Path):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _mean_colour(image: Image.Image | Path) -> tuple[int, int, int]:
    mean = _pixels(image).reshape(-1, 3).astype(np.float64).mean(axis=0)
    return (round(mean[0]), round(mean[1]), round(mean[2]))


def _one_hot(i: int, dims: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dims)]


def _coco_images(count: int) -> list[Path]:
    """The first COCO-mini val images, checked to have distinct mean colours (FakeModel tells them apart so)."""
    images = sorted((COCO / "val2017").glob("*.jpg"))[:count]
    assert len({_mean_colour(p) for p in images}) == count
    return images


def _png_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _accepted_layouts_listed(message: str, layouts: Layouts) -> None:
    lines = [line.strip() for line in message.splitlines()]
    for layout in layouts.layouts:
        assert any(line.startswith(f"{layout.name}:") and layout.needs in line for line in lines), layout.name


# -------------------------------------------------------------------------------------------------- Winoground

# 3 examples over 6 real images (one-hot in 7-d). ex0: all right; ex1: captions swapped, all wrong; ex2: text only
# ((c0_i0, c0_i1, c1_i0, c1_i1) = (.60, .65, .50, .70)).
WINO_EXPECTED = {"text": 200 / 3, "image": 100 / 3, "group": 100 / 3}


def _wino_rows() -> list[dict]:
    return [
        {"id": i, "caption_0": f"ex{i} c0", "caption_1": f"ex{i} c1", "tag": "Object", "secondary_tag": "",
         "num_main_preds": 1, "collapsed_tag": "Object", "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1"}
        for i in range(3)
    ]  # fmt: skip


def _wino_model(images: list[Path], directory: Path) -> Path:
    e = [_one_hot(i, 7) for i in range(7)]
    texts = {
        "ex0 c0": e[0], "ex0 c1": e[1],
        "ex1 c0": e[3], "ex1 c1": e[2],
        "ex2 c0": [0, 0, 0, 0, 0.6, 0.65, math.sqrt(1 - 0.36 - 0.4225)],
        "ex2 c1": [0, 0, 0, 0, 0.5, 0.7, math.sqrt(1 - 0.25 - 0.49)],
    }  # fmt: skip
    vectors = {_mean_colour(p): e[i] for i, p in enumerate(images)}
    return FakeModel(vectors, texts).save_pretrained(directory)


def _write_wino_hub(root: Path, images: list[Path]) -> Path:
    """facebook/winoground as the hub has it: data/examples.jsonl + data/images.zip (images/ex_0_img_0.png...)."""
    (root / "data").mkdir(parents=True)
    rows = _wino_rows()
    (root / "data" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with zipfile.ZipFile(root / "data" / "images.zip", "w") as archive:
        for k, row in enumerate(rows):
            for j in (0, 1):
                archive.writestr(f"images/{row[f'image_{j}']}.png", _png_bytes(images[2 * k + j]))
    return root


def _write_wino_parquet(path: Path, images: list[Path]) -> Path:
    """The hub's parquet (data/test-00000-of-00001.parquet): images as {bytes, path} structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("id", pa.int32()), ("image_0", image), ("image_1", image), ("caption_0", pa.string()),
        ("caption_1", pa.string()), ("tag", pa.string()), ("secondary_tag", pa.string()),
        ("num_main_preds", pa.int32()), ("collapsed_tag", pa.string()),
    ])  # fmt: skip
    rows = []
    for k, row in enumerate(_wino_rows()):
        rows.append(
            row
            | {
                f"image_{j}": {"bytes": _png_bytes(images[2 * k + j]), "path": f"{row[f'image_{j}']}.png"}
                for j in (0, 1)
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_winoground_hub_files_read_images_from_the_zip_in_place(tmp_path, monkeypatch):
    images = _coco_images(6)
    data = _write_wino_hub(tmp_path / "winoground", images)
    loaded = load_winoground(data)
    assert not (data / "data" / "images").exists()  # nothing extracted
    assert loaded.ids == [0, 1, 2] and loaded.captions_1 == ["ex0 c1", "ex1 c1", "ex2 c1"]
    assert loaded.tags == ["Object"] * 3 and loaded.layout == "facebook/winoground files"
    for k in range(3):
        assert np.array_equal(_pixels(loaded.images_0[k]), _pixels(images[2 * k]))
        assert np.array_equal(_pixels(loaded.images_1[k]), _pixels(images[2 * k + 1]))
    use_fake_checkpoints(monkeypatch)
    model = _wino_model(images, tmp_path / "model")
    result = _run(tmp_path, ["winoground", "--model", str(model), "--data", str(data)])
    assert result.metrics == pytest.approx(WINO_EXPECTED)
    assert result.counts == {"examples": 3}


@pytest.mark.parametrize("where", ["data/test-00000-of-00001.parquet", "default/test/0000.parquet", "file"])
def test_winoground_hub_parquet_with_image_bytes(tmp_path, monkeypatch, where):
    images = _coco_images(6)
    root = tmp_path / "winoground"
    file = _write_wino_parquet(root / ("w.parquet" if where == "file" else where), images)
    data = file if where == "file" else root
    loaded = load_winoground(data)
    assert (
        loaded.captions_0 == ["ex0 c0", "ex1 c0", "ex2 c0"] and loaded.layout == "facebook/winoground parquet"
    )
    assert all(isinstance(im, Image.Image) for im in loaded.images_0 + loaded.images_1)
    assert np.array_equal(_pixels(loaded.images_1[2]), _pixels(images[5]))
    use_fake_checkpoints(monkeypatch)
    model = _wino_model(images, tmp_path / "model")
    result = _run(tmp_path, ["winoground", "--model", str(model), "--data", str(data)])
    assert result.metrics == pytest.approx(WINO_EXPECTED)


def test_winoground_zip_missing_an_image_is_a_layout_error(tmp_path, capsys):
    images = _coco_images(6)
    data = _write_wino_hub(tmp_path / "winoground", images)
    rows = _wino_rows()
    rows[1]["image_0"] = "ex_9_img_0"
    (data / "data" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["winoground", "--model", "open_clip:RN50", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "1 of 6 images are not in" in err and "ex_9_img_0" in err
    _accepted_layouts_listed(err, catalog.WINOGROUND)


def test_winoground_without_images_lists_the_accepted_layouts(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "examples.jsonl").write_text(json.dumps(_wino_rows()[0]) + "\n")
    with pytest.raises(LayoutError) as error:
        load_winoground(tmp_path)
    assert "images.zip" in str(error.value).splitlines()[0]
    _accepted_layouts_listed(str(error.value), catalog.WINOGROUND)
    with pytest.raises(LayoutError) as error:
        load_winoground(tmp_path / "data" / "nothing-here")
    _accepted_layouts_listed(str(error.value), catalog.WINOGROUND)


# ------------------------------------------------------------------------------------------------ ImageNet val

# 6 real images of 6 classes (in no sorted order), renamed as the val tarball names them: ILSVRC2012_val_0000000k
SAMPLE_CLASSES = sorted(p.name for p in (IMAGENET / "val").iterdir()) if (IMAGENET / "val").is_dir() else []
VAL_CLASSES = [SAMPLE_CLASSES[i] for i in (5, 0, 499, 3, 250, 1)] if len(SAMPLE_CLASSES) == 500 else []


def _sample_image(wnid: str) -> Path:
    return next((IMAGENET / "val" / wnid).iterdir())


def _flat_val(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = [folder / f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, len(VAL_CLASSES) + 1)]
    for wnid, image in zip(VAL_CLASSES, images, strict=True):
        shutil.copy(_sample_image(wnid), image)
    return images


def _labels() -> list[int]:
    return [WNIDS.index(w) for w in VAL_CLASSES]


def _ilsvrc_ids() -> dict[str, int]:
    """ILSVRC2012_ID of each of the 1000 leaf wnids: a shuffled order, as the devkit's is not the sorted one."""
    order = list(WNIDS)
    random.Random(0).shuffle(order)
    return {wnid: i + 1 for i, wnid in enumerate(order)}


def _meta_mat_bytes() -> bytes:
    """The devkit's data/meta.mat: a 'synsets' struct array (1000 leaves + inner synsets with num_children > 0),
    in the fields and order torchvision's parse_meta_mat reads."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]  # fmt: skip
    ids = _ilsvrc_ids()
    leaves = sorted(ids.items(), key=lambda item: item[1])
    inner = [(1001, "n00001740", 2), (1002, "n00002137", 3)]  # entity, abstraction: not classes
    synsets = np.zeros((len(leaves) + len(inner), 1), dtype=[(f, "O") for f in fields])
    for row, (wnid, idx) in enumerate(leaves):
        synsets[row, 0] = (np.uint16(idx), wnid, f"words of {wnid}", "gloss", np.uint8(0),
                           np.zeros((1, 0)), np.uint8(0), np.uint16(1300))  # fmt: skip
    for row, (idx, wnid, children) in enumerate(inner, start=len(leaves)):
        synsets[row, 0] = (np.uint16(idx), wnid, "inner", "gloss", np.uint8(children),
                           np.arange(1, children + 1), np.uint8(5), np.uint16(0))  # fmt: skip
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def _ground_truth_txt(count: int | None = None) -> str:
    ids = _ilsvrc_ids()
    return "".join(f"{ids[w]}\n" for w in VAL_CLASSES[:count])


def _write_devkit(data: Path, how: str) -> None:
    truth, meta = _ground_truth_txt().encode(), _meta_mat_bytes()
    if how == "files":
        (data / "ILSVRC2012_validation_ground_truth.txt").write_bytes(truth)
        (data / "meta.mat").write_bytes(meta)
    elif how == "devkit folder":
        folder = data / "ILSVRC2012_devkit_t12" / "data"
        folder.mkdir(parents=True)
        (folder / "ILSVRC2012_validation_ground_truth.txt").write_bytes(truth)
        (folder / "meta.mat").write_bytes(meta)
    elif how == "devkit tar.gz":
        with tarfile.open(data / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            for name, payload in (("ILSVRC2012_validation_ground_truth.txt", truth), ("meta.mat", meta)):
                info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    elif how == "meta.bin":  # what torchvision.datasets.ImageNet writes after parsing the devkit
        wnid_to_classes = {w: (f"words of {w}",) for w in WNIDS}
        torch.save((wnid_to_classes, list(VAL_CLASSES)), data / "meta.bin")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["files", "devkit folder", "devkit tar.gz", "meta.bin"])
def test_imagenet_flat_val_with_devkit_ground_truth(tmp_path, how):
    data = tmp_path / "imagenet"
    images = _flat_val(data / "val")
    _write_devkit(data, how)
    loaded = load_imagefolder(data)
    assert loaded.classes == WNIDS  # the standard sorted order, not the devkit's ILSVRC2012_ID order
    assert loaded.images == images and loaded.root == data / "val"
    assert loaded.labels == _labels() and sorted(loaded.labels) != loaded.labels
    assert loaded.layout == ("ImageNet val + meta.bin" if how == "meta.bin" else "ImageNet val + devkit")


def test_imagenet_flat_val_kaggle_layout_scores_through_the_cli(tmp_path, monkeypatch):
    from open_clip import IMAGENET_CLASSNAMES

    data = tmp_path / "imagenet-object-localization-challenge"
    images = _flat_val(data / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    rows = ["ImageId,PredictionString"]
    rows += [f"{p.stem},{w} 12 30 200 180 {w} 5 5 90 90" for p, w in zip(images, VAL_CLASSES, strict=True)]
    rows.append("ILSVRC2012_val_00049999,n15075141 1 2 3 4")  # rows of images not here are fine
    (data / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (data / "LOC_synset_mapping.txt").write_text("".join(f"{w} words of {w}\n" for w in reversed(WNIDS)))
    (data / "ILSVRC" / "Data" / "CLS-LOC" / "train" / WNIDS[0]).mkdir(parents=True)
    loaded = load_imagefolder(data)
    assert loaded.classes == WNIDS and loaded.layout == "ImageNet val, Kaggle"
    assert loaded.labels == _labels() and loaded.images == images
    # end to end: each image's embedding is its class's prompt embedding, except image 6 (taken for image 1's)
    use_fake_checkpoints(monkeypatch)
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    texts = {f"a photo of a {name}.": _one_hot(i, 1000) for i, name in enumerate(IMAGENET_CLASSNAMES)}
    vectors = {_mean_colour(p): _one_hot(label, 1000) for p, label in zip(images, loaded.labels, strict=True)}
    assert len(vectors) == 6  # the images have distinct mean colours
    vectors[_mean_colour(images[5])] = _one_hot(loaded.labels[0], 1000)
    model = FakeModel(vectors, texts).save_pretrained(tmp_path / "model")
    argv = [
        "zeroshot",
        "--model",
        str(model),
        "--data",
        str(data),
        "--templates",
        str(tmp_path / "templates.txt"),
    ]
    result = _run(tmp_path, argv)
    assert result.metrics["top1"] == pytest.approx(500 / 6)
    assert result.counts == {"images": 6, "classes": 1000, "classes_with_images": 6, "templates": 1}
    assert result.dataset["name"] == data.name  # not "imagenet": 6 of the 50,000 images


def test_imagenet_flat_val_without_ground_truth_lists_the_accepted_layouts(tmp_path, capsys):
    data = tmp_path / "imagenet"
    _flat_val(data / "val")
    assert main(["zeroshot", "--model", "open_clip:RN50", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "holds 6 image file(s) directly" in err and "no ground truth" in err
    _accepted_layouts_listed(err, catalog.ZEROSHOT)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(_ground_truth_txt())
    with pytest.raises(LayoutError) as error:
        load_imagefolder(data)
    assert "but no meta.mat" in str(error.value)
    _accepted_layouts_listed(str(error.value), catalog.ZEROSHOT)


def test_imagenet_flat_val_checks_names_and_ground_truth_length(tmp_path):
    data = tmp_path / "imagenet"
    images = _flat_val(data / "val")
    _write_devkit(data, "files")
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(_ground_truth_txt(5))
    with pytest.raises(
        LayoutError, match=r"labels images 1\.\.5; .* also has \['ILSVRC2012_val_00000006.JPEG'\]"
    ):
        load_imagefolder(data)
    images[0].rename(data / "val" / "tench.JPEG")
    with pytest.raises(LayoutError, match=r"not named ILSVRC2012_val_NNNNNNNN"):
        load_imagefolder(data)


def test_imagefolder_layout_is_unchanged_beside_a_devkit(tmp_path):
    """torchvision's ImageNet root: val/{wnid}/ folders with meta.bin and the devkit beside them."""
    data = tmp_path / "imagenet"
    for wnid in VAL_CLASSES:
        (data / "val" / wnid).mkdir(parents=True)
        shutil.copy(_sample_image(wnid), data / "val" / wnid / _sample_image(wnid).name)
    _write_devkit(data, "meta.bin")
    (data / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    loaded = load_imagefolder(data)
    assert loaded.layout == "ImageFolder" and loaded.labels == sorted(_labels()) and loaded.classes == WNIDS


# ---------------------------------------------------------------------------------------------------- retrieval


def _coco_captions() -> dict[str, list[str]]:
    payload = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    names = {im["id"]: im["file_name"] for im in payload["images"]}
    out: dict[str, list[str]] = {}
    for a in sorted(payload["annotations"], key=lambda a: a["id"]):
        out.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
    return out


FLICKR_SPLITS = ["test", "train", "test", "val", "test"]


def _write_flickr(root: Path, images: list[Path], zipped: bool) -> tuple[Path, list[list[str]]]:
    """nlphuji/flickr30k: flickr_annotations_30k.csv (raw = JSON list of 5 captions) + flickr30k-images(.zip)."""
    import pandas as pd

    captions = _coco_captions()
    root.mkdir(parents=True)
    rows, per_image = [], []
    for i, (path, split) in enumerate(zip(images, FLICKR_SPLITS, strict=True)):
        texts = captions[path.name][:5]
        per_image.append(texts)
        name = f"{1000092795 + i}.jpg"
        rows.append({"raw": json.dumps(texts), "sentids": json.dumps(list(range(5 * i, 5 * i + 5))),
                     "split": split, "filename": name, "img_id": i})  # fmt: skip
        if zipped:
            with zipfile.ZipFile(root / "flickr30k-images.zip", "a") as archive:
                archive.write(path, f"flickr30k-images/{name}")
        else:
            (root / "flickr30k-images").mkdir(exist_ok=True)
            shutil.copy(path, root / "flickr30k-images" / name)
    csv = root / "flickr_annotations_30k.csv"
    pd.DataFrame(rows, columns=["raw", "sentids", "split", "filename", "img_id"]).to_csv(csv, index=False)
    return csv, per_image


@pytest.mark.parametrize("zipped", [False, True])
def test_flickr30k_csv_with_split_column(tmp_path, zipped):
    images = _coco_images(5)
    csv, per_image = _write_flickr(tmp_path / "flickr30k", images, zipped)
    for data in (csv, csv.parent):
        loaded = load_retrieval(data)
        assert loaded.name == "flickr30k" and loaded.split == "test" and loaded.layout == "Flickr30k CSV"
        assert loaded.captions == per_image[0] + per_image[2] + per_image[4]
        assert loaded.caption_image == [0] * 5 + [1] * 5 + [2] * 5
        assert [_mean_colour(im) for im in loaded.images] == [_mean_colour(images[i]) for i in (0, 2, 4)]
        assert all(isinstance(im, Image.Image if zipped else Path) for im in loaded.images)
    val = load_retrieval(csv, split="val")
    assert val.name == "flickr30k-val" and val.captions == per_image[3]


def test_flickr30k_csv_zip_scores_through_the_cli(tmp_path, monkeypatch):
    images = _coco_images(5)
    csv, per_image = _write_flickr(tmp_path / "flickr30k", images, zipped=True)
    test = [0, 2, 4]
    vectors = {_mean_colour(images[i]): _one_hot(k, 3) for k, i in enumerate(test)}
    texts = {t: _one_hot(k, 3) for k, i in enumerate(test) for t in per_image[i]}
    use_fake_checkpoints(monkeypatch)
    model = FakeModel(vectors, texts).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["retrieval", "--model", str(model), "--data", str(csv.parent)])
    assert result.metrics["i2t_R@1"] == 100.0 and result.metrics["t2i_R@1"] == 100.0
    assert result.counts == {"images": 3, "captions": 15}
    assert result.dataset["name"] == "flickr30k" and result.dataset["split"] == "test"


def test_flickr30k_csv_errors_list_the_accepted_layouts(tmp_path):
    csv, _ = _write_flickr(tmp_path / "flickr30k", _coco_images(5), zipped=False)
    shutil.rmtree(csv.parent / "flickr30k-images")
    with pytest.raises(LayoutError) as error:
        load_retrieval(csv)
    assert "pass --image-root" in str(error.value)
    _accepted_layouts_listed(str(error.value), catalog.RETRIEVAL)
    with pytest.raises(
        LayoutError, match=r"no images in split 'dev' \(splits present: \['test', 'train', 'val'\]\)"
    ):
        load_retrieval(csv, split="dev")
    csv.write_text("filename,caption\n1.jpg,a dog\n")
    with pytest.raises(LayoutError, match=r"missing columns \['raw', 'split'\]"):
        load_retrieval(csv)
    with pytest.raises(LayoutError) as error:
        load_retrieval(tmp_path)
    _accepted_layouts_listed(str(error.value), catalog.RETRIEVAL)


def _karpathy_coco(path: Path, images: list[Path], captions: dict[str, list[str]]) -> Path:
    """Karpathy's dataset_coco.json: COCO 2014 names (filepath val2014/train2014), cocoid = the COCO image id."""
    entries = []
    for i, (image, split) in enumerate(zip(images, ["test", "test", "restval", "val"], strict=True)):
        cocoid = int(image.stem)
        folder = "train2014" if split == "restval" else "val2014"
        sentences = [{"raw": t, "tokens": t.lower().split(), "imgid": i, "sentid": 10 * i + j}
                     for j, t in enumerate(captions[image.name])]  # fmt: skip
        entries.append({"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": i,
                        "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                        "cocoid": cocoid})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def test_karpathy_coco_2014_json_on_coco_2014_and_2017_image_folders(tmp_path):
    images = _coco_images(4)
    captions = _coco_captions()
    # COCO 2014 folders beside the JSON (no --image-root needed)
    root = tmp_path / "coco2014"
    json_path = _karpathy_coco(root / "dataset_coco.json", images, captions)
    for image, folder in zip(images, ["val2014", "val2014", "train2014", "val2014"], strict=True):
        (root / folder).mkdir(exist_ok=True)
        shutil.copy(image, root / folder / f"COCO_{folder}_{int(image.stem):012d}.jpg")
    for data in (json_path, root):
        loaded = load_retrieval(data)
        assert loaded.name == "coco" and loaded.layout == "Karpathy JSON"
        assert loaded.images == [
            root / "val2014" / f"COCO_val2014_{int(p.stem):012d}.jpg" for p in images[:2]
        ]
        assert loaded.captions == captions[images[0].name] + captions[images[1].name]
    train = load_retrieval(json_path, split="train")  # restval counts as train
    assert train.name == "coco-train" and train.images == [
        root / "train2014" / f"COCO_train2014_{int(images[2].stem):012d}.jpg"
    ]
    # the same JSON on a COCO 2017 copy: the images are found by cocoid in val2017/
    loaded = load_retrieval(json_path, image_root=COCO)
    assert loaded.images == [COCO / "val2017" / p.name for p in images[:2]]


# ---------------------------------------------------------------------------------------- layout errors, MMVP


def test_mmvp_and_knn_errors_list_their_layouts(tmp_path, capsys):
    assert main(["mmvp", "--model", "open_clip:RN50", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Questions.csv not found" in err and "Expected layout:" in err
    _accepted_layouts_listed(err, catalog.MMVP)
    assert main(["knn", "--model", "open_clip:RN50", "--data", str(tmp_path)]) == 2
    _accepted_layouts_listed(capsys.readouterr().err, catalog.KNN)


def test_help_shows_every_accepted_layout(capsys):
    with pytest.raises(SystemExit):
        main(["winoground", "--help"])
    _accepted_layouts_listed(capsys.readouterr().out, catalog.WINOGROUND)


# ------------------------------------------------------------------------------------- references: size gating


def _result(task: str, name: str, counts: dict[str, int], metrics: dict[str, float]) -> EvalResult:
    return EvalResult(task=task, dataset={"name": name}, model={"spec": "m"}, metrics=metrics, counts=counts)


def test_published_numbers_only_beside_results_of_the_benchmark_size(tmp_path, monkeypatch):
    images = _coco_images(6)
    data = _write_wino_hub(tmp_path / "winoground", images)
    use_fake_checkpoints(monkeypatch)
    small = _run(
        tmp_path, ["winoground", "--model", str(_wino_model(images, tmp_path / "m")), "--data", str(data)]
    )
    assert small.dataset["name"] == "winoground" and small.counts == {"examples": 3}
    columns = [("winoground", "winoground", m) for m in ("text", "image", "group")]
    assert references.reference_rows([small], columns) == {}
    assert references.withheld_references([small]) == [
        "winoground winoground: 3 examples, the published numbers are for Winoground: 400 examples"
    ]
    full = _result("winoground", "winoground", {"examples": 400}, {"text": 30.0, "image": 10.0, "group": 5.0})
    rows = references.reference_rows([full], columns)
    assert rows["SAIL-L (NV2), 23M pairs [SAIL README]"] == {
        ("winoground", "winoground", "text"): 40.25,
        ("winoground", "winoground", "image"): 18.75,
        ("winoground", "winoground", "group"): 15.0,
    }
    # one small run in a column withholds the column
    assert references.reference_rows([full, small], columns) == {}


@pytest.mark.parametrize(
    ("task", "name", "counts", "shown"),
    [
        ("zeroshot", "imagenet", {"images": 50_000, "classes": 1000}, True),
        ("zeroshot", "imagenet", {"images": 1000, "classes": 1000}, False),  # one image per class
        ("retrieval", "coco", {"images": 5000, "captions": 25_010}, True),
        ("retrieval", "coco", {"images": 5000, "captions": 25_000}, True),
        ("retrieval", "coco", {"images": 3, "captions": 5}, False),
        ("retrieval", "flickr30k", {"images": 1000, "captions": 5000}, True),
        ("retrieval", "flickr30k", {"images": 1014, "captions": 5070}, False),  # Karpathy val, renamed
        ("mmvp", "mmvp", {"pairs": 135, "categories": 9}, True),  # 9 patterns x 15 pairs
        ("mmvp", "mmvp", {"pairs": 150, "categories": 9}, False),  # MMVP's MLLM benchmark size
        ("mmvp", "mmvp", {"pairs": 3, "categories": 2}, False),
    ],
)
def test_reference_gating_per_benchmark(task, name, counts, shown):
    column = {"zeroshot": "top1", "retrieval": "i2t_R@1", "mmvp": "average"}[task]
    result = _result(task, name, counts, {column: 1.0})
    rows = references.reference_rows([result], [(task, name, column)])
    assert bool(rows) is shown
    assert (references.size_mismatch(task, name, counts) is None) is shown


def test_every_published_number_has_a_reference_benchmark():
    keys = {(t, d) for values in references.REFERENCE_RESULTS.values() for t, d, _ in values}
    assert keys <= set(references.REFERENCE_BENCHMARK_BY_KEY)
    # names without published numbers are never gated
    assert references.size_mismatch("retrieval", "coco-val2017", {"images": 79}) is None
