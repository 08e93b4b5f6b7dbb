"""Winoground, MMVP-VLM, MMEB and the kNN probe, each built on disk as the public dataset ships and scored end
to end through the CLI with a model whose embeddings the test chooses."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from evaluate_helpers import PALETTE, FakeModel, save_image, solid_image, use_fake_checkpoints

from evaluate.cli import main
from evaluate.results import EvalResult

S = math.sqrt


def _run(tmp_path, argv):
    out = tmp_path / "result.json"
    assert main([*argv, "--output", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    return EvalResult.load(out)


# Winoground: 4 examples. ex0 all right; ex1 text only; ex2 image only; ex3 everything tied.
# (c0_i0, c0_i1, c1_i0, c1_i1) = ex0 (1, 0, 0, 1); ex1 (.60, .65, .50, .70); ex2 (.60, .50, .65, .70); ex3 all .71
WINO_IMAGES = {  # example -> (colour of image_0, colour of image_1)
    0: (PALETTE[0], PALETTE[1]), 1: (PALETTE[2], PALETTE[3]), 2: (PALETTE[4], PALETTE[5]), 3: (PALETTE[6], PALETTE[7]),
}  # fmt: skip
WINO_IMAGE_VECTORS = {
    PALETTE[0]: [1, 0, 0], PALETTE[1]: [0, 1, 0],
    PALETTE[2]: [0.6, 0.5, S(1 - 0.61)], PALETTE[3]: [0.65, 0.7, S(1 - 0.4225 - 0.49)],
    PALETTE[4]: [1, 0, 0], PALETTE[5]: [0, 1, 0],
    PALETTE[6]: [1, 1, 0], PALETTE[7]: [1, 1, 0],
}  # fmt: skip
WINO_TEXTS = {
    "ex0 c0": [1, 0, 0], "ex0 c1": [0, 1, 0],
    "ex1 c0": [1, 0, 0], "ex1 c1": [0, 1, 0],
    "ex2 c0": [0.6, 0.5, S(1 - 0.61)], "ex2 c1": [0.65, 0.7, S(1 - 0.4225 - 0.49)],
    "ex3 c0": [1, 0, 0], "ex3 c1": [0, 1, 0],
}  # fmt: skip
WINO_EXPECTED = {"text": 50.0, "image": 50.0, "group": 25.0}


def _wino_rows():
    return [
        {"id": i, "caption_0": f"ex{i} c0", "caption_1": f"ex{i} c1", "tag": "Object", "secondary_tag": "",
         "num_main_preds": 1, "collapsed_tag": "Object"}
        for i in WINO_IMAGES
    ]  # fmt: skip


def test_winoground_original_jsonl_release(tmp_path, monkeypatch):
    use_fake_checkpoints(monkeypatch)
    data = tmp_path / "winoground"
    lines = []
    for row in _wino_rows():
        i = row["id"]
        for j in (0, 1):
            save_image(data / "data" / "images" / f"ex_{i}_img_{j}.png", WINO_IMAGES[i][j])
        lines.append(json.dumps(row | {"image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1"}))
    (data / "data" / "examples.jsonl").write_text("\n".join(lines) + "\n")
    model = FakeModel(WINO_IMAGE_VECTORS, WINO_TEXTS).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["winoground", "--model", str(model), "--data", str(data)])
    assert result.metrics == pytest.approx(WINO_EXPECTED)
    assert result.counts == {"examples": 4}


def test_winoground_datasets_save_to_disk_copy(tmp_path, monkeypatch):
    import datasets

    use_fake_checkpoints(monkeypatch)
    rows = [
        r | {"image_0": solid_image(WINO_IMAGES[r["id"]][0]), "image_1": solid_image(WINO_IMAGES[r["id"]][1])}
        for r in _wino_rows()
    ]
    features = datasets.Features({
        "id": datasets.Value("int32"), "image_0": datasets.Image(), "image_1": datasets.Image(),
        "caption_0": datasets.Value("string"), "caption_1": datasets.Value("string"), "tag": datasets.Value("string"),
        "secondary_tag": datasets.Value("string"), "num_main_preds": datasets.Value("int32"),
        "collapsed_tag": datasets.Value("string"),
    })  # fmt: skip
    ds = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=features)})
    ds.save_to_disk(str(tmp_path / "winoground_hf"))
    model = FakeModel(WINO_IMAGE_VECTORS, WINO_TEXTS).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["winoground", "--model", str(model), "--data", str(tmp_path / "winoground_hf")])
    assert result.metrics == pytest.approx(WINO_EXPECTED)


def test_mmvp_questions_csv_and_category_folders(tmp_path, monkeypatch):
    use_fake_checkpoints(monkeypatch)
    data = tmp_path / "MMVP_VLM"
    rows = [  # (Question ID, Type, Statement, colour)
        (1, "Orientation", "the dog faces left", PALETTE[0]), (2, "Orientation", "the dog faces right", PALETTE[1]),
        (3, "Orientation", "the arrow points up", PALETTE[2]), (4, "Orientation", "the arrow points down", PALETTE[3]),
        (5, "Color", "the car is red", PALETTE[4]), (6, "Color", "the car is blue", PALETTE[5]),
    ]  # fmt: skip
    # stored out of order: pairs are (1,2), (3,4), (5,6) by Question ID
    data.mkdir()
    table = pd.DataFrame([r[:3] for r in reversed(rows)], columns=["Question ID", "Type", "Statement"])
    table.to_csv(data / "Questions.csv", index=False)
    for qid, kind, _, colour in rows:
        save_image(data / "MLLM_VLM Images" / kind / f"{qid}.jpg", colour)
    texts = {
        "a photo of the dog faces left": [1, 0], "a photo of the dog faces right": [0, 1],  # pair right
        "a photo of the arrow points up": [1, 0], "a photo of the arrow points down": [1, 0.2],  # 2nd picks wrong
        "a photo of the car is red": [1, 1], "a photo of the car is blue": [0, 1],  # 1st statement ties
    }  # fmt: skip
    images = {PALETTE[0]: [1, 0], PALETTE[1]: [0, 1], PALETTE[2]: [1, 0], PALETTE[3]: [0, 1],
              PALETTE[4]: [1, 0], PALETTE[5]: [0, 1]}  # fmt: skip
    model = FakeModel(images, texts).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["mmvp", "--model", str(model), "--data", str(data)])
    assert result.metrics == pytest.approx({"Orientation": 50.0, "Color": 0.0, "average": 25.0})
    assert result.counts == {"pairs": 3, "categories": 2}


def test_mmvp_missing_column_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "Questions.csv").write_text("Question ID,Statement\n1,x\n2,y\n")
    assert main(["mmvp", "--model", "open_clip:RN50", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing columns ['Type']" in err and "MLLM_VLM Images" in err


def _write_mmeb_subset(root, name, rows):
    (root / name).mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / name / "test-00000-of-00001.parquet")


def test_mmeb_eval_layout_with_score_fusion_and_aggregation(tmp_path, monkeypatch):
    use_fake_checkpoints(monkeypatch)
    data = tmp_path / "MMEB-eval"
    images = data / "eval_images"
    red, green, blue = PALETTE[0], PALETTE[1], PALETTE[2]
    save_image(images / "ImageNet-1K" / "a.jpg", red)
    save_image(images / "ImageNet-1K" / "b.jpg", green)
    save_image(images / "VisualNews_t2i" / "x.jpg", red)
    save_image(images / "VisualNews_t2i" / "y.jpg", blue)
    save_image(images / "RefCOCO" / "q.jpg", green)
    inst = "<|image_1|>\nRepresent the given image for classification"
    _write_mmeb_subset(data, "ImageNet-1K", {  # q0 right; q1's positive ties with a negative
        "qry_text": [inst, inst], "qry_img_path": ["ImageNet-1K/a.jpg", "ImageNet-1K/b.jpg"],
        "tgt_text": [["cat", "dog", "fish"], ["dog", "bird", "fish"]], "tgt_img_path": [["", "", ""]] * 2,
    })  # fmt: skip
    _write_mmeb_subset(data, "VisualNews_t2i", {  # text query -> image candidates: right (100)
        "qry_text": ["Retrieve an image of this news caption. storm"], "qry_img_path": [""],
        "tgt_text": [["", ""]], "tgt_img_path": [["VisualNews_t2i/y.jpg", "VisualNews_t2i/x.jpg"]],
    })  # fmt: skip
    _write_mmeb_subset(data, "RefCOCO", {  # image+text query: fusion needed to pick the positive (100)
        "qry_text": ["<|image_1|>\nSelect the portion of the image that isolates the object: the boat"],
        "qry_img_path": ["RefCOCO/q.jpg"], "tgt_text": [["boat crop", "tree crop"]], "tgt_img_path": [["", ""]],
    })  # fmt: skip
    texts = {
        "Represent the given image for classification": [0, 0, 0, 1],
        "cat": [1, 0, 0, 0],
        "dog": [0, 1, 0, 0],
        "fish": [0, 0, 1, 0],
        "bird": [0, 1, 0, 0],
        "Retrieve an image of this news caption. storm": [0, 0, 1, 0],
        "Select the portion of the image that isolates the object: the boat": [1, 0, 0, 0],
        # image alone (green = e1) prefers "tree crop"; image+text fused = (e0 + e1)/sqrt2 prefers "boat crop"
        "boat crop": [0.8, 0.6, 0, 0],
        "tree crop": [0, 1, 0, 0],
    }
    model = FakeModel({red: [1, 0, 0, 0], green: [0, 1, 0, 0], blue: [0, 0, 1, 0]}, texts)
    model_dir = model.save_pretrained(tmp_path / "model")
    # Default rule "optimistic" (VLM2Vec's np.argmax picks the first maximum, the positive): q1's tie is a hit, so
    # ImageNet-1K is 100 and every aggregate 100 (they were 50 / 75 / 250/3 when ties always counted against the
    # positive; those are now the values of --ties pessimistic, checked below).
    result = _run(tmp_path, ["mmeb", "--model", str(model_dir), "--data", str(data)])
    assert result.details["per_dataset"] == pytest.approx(
        {"ImageNet-1K": 100.0, "VisualNews_t2i": 100.0, "RefCOCO": 100.0}
    )
    assert result.metrics == pytest.approx(
        {
            "classification": 100.0,
            "retrieval": 100.0,
            "grounding": 100.0,
            "IND": 100.0,
            "OOD": 100.0,
            "overall": 100.0,
        }
    )
    assert result.ties == {
        "rule": "optimistic",
        "tied": {"ImageNet-1K": 1, "VisualNews_t2i": 0, "RefCOCO": 0},
    }
    strict = _run(tmp_path, ["mmeb", "--model", str(model_dir), "--data", str(data), "--ties", "pessimistic"])
    assert strict.details["per_dataset"] == pytest.approx(
        {"ImageNet-1K": 50.0, "VisualNews_t2i": 100.0, "RefCOCO": 100.0}
    )
    assert strict.metrics == pytest.approx(
        {
            "classification": 50.0,
            "retrieval": 100.0,
            "grounding": 100.0,
            "IND": 75.0,
            "OOD": 100.0,
            "overall": 250 / 3,
        }
    )
    assert strict.ties["rule"] == "pessimistic" and strict.ties["tied"]["ImageNet-1K"] == 1
    assert result.counts == {"ImageNet-1K": 2, "VisualNews_t2i": 1, "RefCOCO": 1, "datasets": 3}
    assert result.dataset["subsets"] == ["ImageNet-1K", "VisualNews_t2i", "RefCOCO"]  # MMEB table order


def test_mmeb_rejects_unknown_subsets_and_missing_images(tmp_path, capsys):
    data = tmp_path / "MMEB-eval"
    (data / "eval_images").mkdir(parents=True)
    assert main(["mmeb", "--model", "open_clip:RN50", "--data", str(data), "--subsets", "NotAThing"]) == 2
    assert "unknown MMEB datasets" in capsys.readouterr().err
    _write_mmeb_subset(
        data,
        "CIRR",
        {
            "qry_text": ["q"],
            "qry_img_path": ["CIRR/missing.png"],
            "tgt_text": [["a", "b"]],
            "tgt_img_path": [["", ""]],
        },
    )
    assert main(["mmeb", "--model", "open_clip:RN50", "--data", str(data)]) == 2
    assert "image files are missing" in capsys.readouterr().err


def test_knn_probe_on_train_val_imagefolders(tmp_path, monkeypatch):
    use_fake_checkpoints(monkeypatch)
    data = tmp_path / "folder"
    # train: class a at angles 0, 10 deg; class b at 80, 90 deg. val: a at 30 deg (right), b at 50 deg (right),
    # a at 60 deg (wrong at k=1; at k=4 every train image votes)
    angles = {PALETTE[0]: 0, PALETTE[1]: 10, PALETTE[2]: 80, PALETTE[3]: 90, PALETTE[4]: 30, PALETTE[5]: 50,
              PALETTE[6]: 60}  # fmt: skip
    for split, cls, colours in [("train", "a", [PALETTE[0], PALETTE[1]]), ("train", "b", [PALETTE[2], PALETTE[3]]),
                                ("val", "a", [PALETTE[4], PALETTE[6]]), ("val", "b", [PALETTE[5]])]:  # fmt: skip
        for i, colour in enumerate(colours):
            save_image(data / split / cls / f"{i}.jpg", colour)
    vectors = {c: [math.cos(math.radians(a)), math.sin(math.radians(a))] for c, a in angles.items()}
    model = FakeModel(vectors, {}).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["knn", "--model", str(model), "--data", str(data), "--k", "1", "4"])
    assert result.metrics["k1_top1"] == pytest.approx(200 / 3)
    # k=4, T=0.07, query at 60 deg: class a votes e^{cos60/T}+e^{cos50/T}, class b e^{cos20/T}+e^{cos30/T} -> b
    assert result.metrics["k4_top1"] == pytest.approx(200 / 3)
    assert result.counts == {"train_images": 4, "val_images": 3, "classes": 2}


class InterleavedFake(FakeModel):
    """A model with its own ``encode(inputs)`` (like vlm2vec): MMEB must use it instead of score fusion."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    def encode(self, inputs):
        self.seen.extend(inputs)
        rows = []
        for item in inputs:
            vector = self._text_vector(item.text) if item.text else self._image_vector(item.image)
            rows.append(vector)
        return torch.stack(rows).float()


def test_mmeb_uses_the_model_encode_and_passes_images_separately_from_text(tmp_path):
    from evaluate import tasks
    from evaluate.cache import FeatureCache
    from evaluate.datasets import load_mmeb

    data = tmp_path / "MMEB-eval"
    save_image(data / "eval_images" / "N24News" / "a.jpg", PALETTE[0])
    _write_mmeb_subset(data, "N24News", {
        "qry_text": ["<|image_1|>\nRepresent the given news image with the following caption for domain "
                     "classification: storm hits coast"],
        "qry_img_path": ["N24News/a.jpg"], "tgt_text": [["weather", "sports"]], "tgt_img_path": [["", ""]],
    })  # fmt: skip
    query = "Represent the given news image with the following caption for domain classification: storm hits coast"
    model = InterleavedFake({PALETTE[0]: [1, 0]}, {query: [0.2, 1], "weather": [0, 1], "sports": [1, 0]})
    subsets = load_mmeb(data, ["N24News"])
    result = tasks.mmeb(model, subsets, tasks.EncodeSettings(FeatureCache(None, "x")))
    # fusion would give (e0 + normalize(0.2, 1)) -> prefers "sports"; the model's own text-first encode -> "weather"
    assert result.details["per_dataset"] == {"N24News": 100.0}
    assert model.image_calls == 0 and model.text_calls == 0
    first = model.seen[0]
    # the text verbatim, placeholder and all (the model places the image itself), the image passed separately
    assert first.text == "<|image_1|>\n" + query and first.image is not None and first.instruction is None
