"""Zero-shot ImageFolder and COCO / Karpathy retrieval, built on disk as the datasets ship, scored end to end
through the CLI with a model whose embeddings the test chooses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evaluate_helpers import (
    PALETTE,
    FakeModel,
    use_fake_checkpoints,
    write_coco_captions,
    write_imagefolder,
    write_karpathy,
)

from evaluate.cli import main
from evaluate.results import EvalResult

RED, GREEN, BLUE, YELLOW, CYAN = PALETTE[:5]


def _run(tmp_path, argv):
    out = tmp_path / "result.json"
    code = main([*argv, "--output", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    return EvalResult.load(out)


def test_zeroshot_classifies_among_all_classes_including_those_without_images(tmp_path, monkeypatch, capsys):
    use_fake_checkpoints(monkeypatch)
    data = write_imagefolder(
        tmp_path / "inet", {"n001": [RED, GREEN], "n003": [BLUE]}, wnids=["n001", "n002", "n003"]
    )
    (tmp_path / "names.txt").write_text("alpha\nbeta\ngamma\n")
    model = FakeModel(
        image_vectors={RED: [1, 0, 0], GREEN: [0, 1, 0], BLUE: [0, 0.6, 0.8]},
        text_vectors={"alpha": [1, 0, 0], "beta": [0, 1, 0], "gamma": [0, 0, 1]},
    ).save_pretrained(tmp_path / "model")
    result = _run(
        tmp_path,
        ["zeroshot", "--model", str(model), "--data", str(data), "--classnames", str(tmp_path / "names.txt")],
    )
    # RED -> alpha (right); GREEN (class n001) -> beta, a class without images (wrong); BLUE -> gamma (right)
    assert result.metrics == pytest.approx({"top1": 200 / 3, "top5": 100.0, "mean_per_class_recall": 75.0})
    assert result.counts == {"images": 3, "classes": 3, "classes_with_images": 2, "templates": 80}
    assert result.task == "zeroshot" and result.dataset["name"] == "inet"
    assert len(result.model["fingerprint"]) == 32 and result.model["config"]["type"] == "fake"
    assert "top1" in capsys.readouterr().out


def test_zeroshot_defaults_to_imagenet_classnames_and_custom_templates(tmp_path, monkeypatch):
    from open_clip import IMAGENET_CLASSNAMES

    use_fake_checkpoints(monkeypatch)
    wnids = [f"n{i:08d}" for i in range(1000)]
    data = write_imagefolder(tmp_path / "inet", {wnids[1]: [RED], wnids[999]: [GREEN]}, wnids=wnids)
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    texts = {
        name: [1.0 if i == j else 0.0 for j in range(1000)] for i, name in enumerate(IMAGENET_CLASSNAMES)
    }
    # some names contain others ("crane"): exact prompt keys avoid it. IMAGENET_CLASSNAMES repeats 'missile' and
    # 'sunglasses' (657/744, 836/837): each repeated pair shares one prompt, so one vector, and ties (no image here)
    texts = {f"a photo of a {name}.": v for name, v in texts.items()}
    images = {
        RED: texts[f"a photo of a {IMAGENET_CLASSNAMES[1]}."],
        GREEN: texts[f"a photo of a {IMAGENET_CLASSNAMES[5]}."],
    }
    model = FakeModel(images, texts).save_pretrained(tmp_path / "model")
    result = _run(
        tmp_path,
        [
            "zeroshot",
            "--model",
            str(model),
            "--data",
            str(data),
            "--templates",
            str(tmp_path / "templates.txt"),
        ],
    )
    assert result.dataset["name"] == "inet"  # "imagenet" is kept for runs on all 1000 classes
    assert result.metrics["top1"] == 50.0 and result.metrics["mean_per_class_recall"] == 50.0
    assert result.counts["classes"] == 1000 and result.counts["templates"] == 1


def test_zeroshot_wrong_layout_fails_before_the_model_is_loaded(tmp_path, capsys):
    (tmp_path / "inet" / "val").mkdir(parents=True)
    (tmp_path / "inet" / "val" / "n5").mkdir()
    (tmp_path / "inet" / "wnids.txt").write_text("n1\nn2\n")
    assert main(["zeroshot", "--model", "open_clip:not-a-model", "--data", str(tmp_path / "inet")]) == 2
    err = capsys.readouterr().err
    assert "folders not listed" in err and "Expected layout" in err


COCO_IMAGES = [RED, GREEN, BLUE]
# image of each caption; vectors chosen so that ranks are hand-computable (see the test)
COCO_CAPTIONS = [(0, "a1"), (0, "a2"), (1, "b1"), (1, "b2"), (2, "c1")]
COCO_TEXTS = {"a1": [1, 0, 0], "a2": [0, 1, 0], "b1": [0, 1, 0], "b2": [1, 0, 1], "c1": [0, 0, 1]}
COCO_VECTORS = {RED: [1, 0, 0], GREEN: [0, 1, 0], BLUE: [0, 0, 1]}
# i2t: RED best positive a1 (rank 0); GREEN: b1 = 1 ties with negative a2 -> rank 1 if it loses the tie, 0 if it
#      wins it; BLUE: c1 rank 0
# t2i: a1 rank 0; a2 (RED scores 0, GREEN 1, BLUE 0 tie) -> rank 1 or 2; b1 rank 0; b2 (GREEN 0, RED & BLUE .71)
#      -> 2; c1 rank 0. Only GREEN's tie is at a cut-off (R@1): the tie rule decides 1 query of i2t_R@1.
# The default rule of retrieval is "expected" (CLIP_benchmark's torch.topk order is arbitrary): GREEN's tie of
# one positive with one negative for one slot earns 1/2, so i2t_R@1 = (1 + 1/2 + 1) / 3 (it was 200 / 3 when
# ties always counted against the positive: that value is now the "pessimistic" one, tested below).
EXPECTED_RETRIEVAL = {
    "i2t_R@1": 250 / 3,
    "i2t_R@5": 100.0,
    "i2t_R@10": 100.0,
    "t2i_R@1": 60.0,
    "t2i_R@5": 100.0,
    "t2i_R@10": 100.0,
}


def test_retrieval_on_coco_captions_layout(tmp_path, monkeypatch):
    use_fake_checkpoints(monkeypatch)
    write_coco_captions(tmp_path / "coco", "val2017", COCO_IMAGES, COCO_CAPTIONS)
    model = FakeModel(COCO_VECTORS, COCO_TEXTS).save_pretrained(tmp_path / "model")
    result = _run(tmp_path, ["retrieval", "--model", str(model), "--data", str(tmp_path / "coco")])
    expected = EXPECTED_RETRIEVAL | {"mean_recall": sum(EXPECTED_RETRIEVAL.values()) / 6}
    assert result.metrics == pytest.approx(expected)
    assert result.counts == {"images": 3, "captions": 5}
    assert result.ties == {"rule": "expected", "tied": {k: int(k == "i2t_R@1") for k in EXPECTED_RETRIEVAL}}
    assert result.dataset["split"] == "val2017" and result.dataset["name"] == "coco-val2017"
    # the same through the JSON path + --image-root
    json_path = tmp_path / "coco" / "annotations" / "captions_val2017.json"
    again = _run(
        tmp_path,
        [
            "retrieval",
            "--model",
            str(model),
            "--data",
            str(json_path),
            "--image-root",
            str(tmp_path / "coco" / "val2017"),
        ],
    )
    assert again.metrics == result.metrics


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_retrieval_on_karpathy_json_uses_the_test_split_only(tmp_path, monkeypatch, dataset):
    use_fake_checkpoints(monkeypatch)
    images = [*COCO_IMAGES, YELLOW]
    captions = [*COCO_CAPTIONS, (3, "train caption")]
    path = write_karpathy(
        tmp_path / f"dataset_{dataset}.json",
        tmp_path / "images",
        dataset,
        ["test", "test", "test", "train"],
        images,
        captions,
    )
    model = FakeModel(COCO_VECTORS | {YELLOW: [1, 1, 1]}, COCO_TEXTS | {"train caption": [1, 0, 0]})
    model_dir = model.save_pretrained(tmp_path / "model")
    result = _run(
        tmp_path,
        [
            "retrieval",
            "--model",
            str(model_dir),
            "--data",
            str(path),
            "--image-root",
            str(tmp_path / "images"),
        ],
    )
    assert result.counts == {"images": 3, "captions": 5}
    assert result.dataset == {"name": dataset, "path": str(path), "split": "test"}
    assert {k: result.metrics[k] for k in EXPECTED_RETRIEVAL} == pytest.approx(EXPECTED_RETRIEVAL)


@pytest.mark.parametrize(
    ("rule", "i2t_r1"), [("pessimistic", 200 / 3), ("optimistic", 100.0), ("expected", 250 / 3)]
)
def test_retrieval_ties_flag_reaches_the_result_json_and_the_printed_table(
    tmp_path, monkeypatch, capsys, rule, i2t_r1
):
    use_fake_checkpoints(monkeypatch)
    write_coco_captions(tmp_path / "coco", "val2017", COCO_IMAGES, COCO_CAPTIONS)
    model = FakeModel(COCO_VECTORS, COCO_TEXTS).save_pretrained(tmp_path / "model")
    argv = ["retrieval", "--model", str(model), "--data", str(tmp_path / "coco"), "--ties", rule]
    result = _run(tmp_path, argv)
    assert result.metrics == pytest.approx(
        EXPECTED_RETRIEVAL
        | {"i2t_R@1": i2t_r1, "mean_recall": (sum(EXPECTED_RETRIEVAL.values()) - 250 / 3 + i2t_r1) / 6}
    )
    assert result.ties["rule"] == rule and result.ties["tied"]["i2t_R@1"] == 1
    assert sum(result.ties["tied"].values()) == 1 and result.format_version == 2
    out = capsys.readouterr().out
    assert f"| retrieval on coco-val2017 (ties: {rule}) | value |" in out
    assert "| tied i2t_R@1 | 1 |" in out and "| tied t2i_R@1 |" not in out  # zero counts are not shown


def test_retrieval_rejects_an_unknown_tie_rule(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["retrieval", "--model", "x", "--data", str(tmp_path), "--ties", "random"])
    assert "invalid choice: 'random'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rule", "top1"), [("pessimistic", 100 / 3), ("optimistic", 100.0), ("expected", 200 / 3)]
)
def test_zeroshot_duplicated_class_names_tie_and_the_rule_is_recorded(tmp_path, monkeypatch, rule, top1):
    use_fake_checkpoints(monkeypatch)
    data = write_imagefolder(tmp_path / "inet", {"n001": [RED], "n002": [GREEN], "n003": [BLUE]})
    (tmp_path / "names.txt").write_text("missile\nmissile\ngoose\n")  # like ImageNet's classes 657 and 744
    model = FakeModel(
        image_vectors={RED: [1, 0], GREEN: [1, 0.1], BLUE: [0, 1]},
        text_vectors={"missile": [1, 0], "goose": [0, 1]},
    ).save_pretrained(tmp_path / "model")
    argv = [
        "zeroshot",
        "--model",
        str(model),
        "--data",
        str(data),
        "--classnames",
        str(tmp_path / "names.txt"),
    ]
    default = _run(tmp_path, argv)
    result = _run(tmp_path, [*argv, "--ties", rule])
    # RED and GREEN tie between the two identical 'missile' classes (1 slot, 2 tied): 0, 1/2 or 1 each; BLUE right
    assert result.metrics == pytest.approx({"top1": top1, "top5": 100.0, "mean_per_class_recall": top1})
    assert result.ties == {"rule": rule, "tied": {"top1": 2, "top5": 0, "mean_per_class_recall": 2}}
    assert default.ties["rule"] == "expected" and default.metrics["top1"] == pytest.approx(200 / 3)


def test_retrieval_missing_images_fail_before_encoding(tmp_path, monkeypatch, capsys):
    use_fake_checkpoints(monkeypatch)
    write_coco_captions(tmp_path / "coco", "val2017", COCO_IMAGES, COCO_CAPTIONS)
    next((tmp_path / "coco" / "val2017").iterdir()).unlink()
    model = FakeModel(COCO_VECTORS, COCO_TEXTS).save_pretrained(tmp_path / "model")
    out = tmp_path / "r.json"
    assert (
        main(["retrieval", "--model", str(model), "--data", str(tmp_path / "coco"), "--output", str(out)])
        == 2
    )
    assert "1 of 3 image files are missing" in capsys.readouterr().err
    assert not out.exists()


def test_report_joins_results_beside_reference_numbers_of_the_same_protocol(tmp_path, monkeypatch, capsys):
    use_fake_checkpoints(monkeypatch)
    model = FakeModel(COCO_VECTORS, COCO_TEXTS).save_pretrained(tmp_path / "model")
    write_coco_captions(tmp_path / "coco", "val2017", COCO_IMAGES, COCO_CAPTIONS)
    karpathy = write_karpathy(
        tmp_path / "dataset_coco.json", tmp_path / "images", "coco", ["test"] * 3, COCO_IMAGES, COCO_CAPTIONS
    )
    results = []
    for name, argv in [
        ("val2017", ["--data", str(tmp_path / "coco")]),
        ("karpathy", ["--data", str(karpathy), "--image-root", str(tmp_path / "images")]),
    ]:
        results.append(tmp_path / f"{name}.json")
        common = ["--model", str(model), "--output", str(results[-1]), "--cache-dir", str(tmp_path / "c")]
        assert main(["retrieval", *common, *argv]) == 0
    capsys.readouterr()

    def report(*paths: Path) -> tuple[list[str], dict[str, list[str]], str]:
        table_path = tmp_path / "table.md"
        assert main(["report", *map(str, paths), "--references", "--output", str(table_path)]) == 0
        table = capsys.readouterr().out
        assert table_path.read_text().strip() == table.strip()
        lines = [line for line in table.splitlines() if line.startswith("|")]
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        rows = {
            line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]
        }
        return header, rows, table

    header, rows, table = report(*results)
    assert header[:3] == ["model", "retrieval coco-val2017 i2t_R@1", "retrieval coco-val2017 i2t_R@5"]
    assert header.index("retrieval coco i2t_R@1") == 7
    # 83.33 = EXPECTED_RETRIEVAL's i2t_R@1 under the default "expected" rule (66.67 when ties counted against)
    assert rows[str(model)][1] == rows[str(model)][7] == "83.33"
    # 3 test images are not the Karpathy 5k test: the published numbers are left out, and the report says why.
    assert "SAIL-L (NV2), 23M pairs [SAIL README]" not in rows
    assert "Published numbers left out: retrieval coco: 3 images" in table
    # A result of the benchmark's size gets them, only beside the Karpathy protocol's columns.
    full = json.loads(results[1].read_text())
    full["counts"]["images"] = 5000
    (tmp_path / "karpathy_5k.json").write_text(json.dumps(full))
    _, rows, table = report(results[0], tmp_path / "karpathy_5k.json")
    sail = rows["SAIL-L (NV2), 23M pairs [SAIL README]"]
    assert sail[1] == "–" and sail[7] == "62.40"  # the published number only beside the Karpathy 5k protocol
    assert "VLM2Vec (Phi-3.5-V, full) [VLM2Vec Table 2]" not in rows  # no MMEB column, no MMEB reference row
    assert "left out" not in table


def test_retrieval_json_without_required_keys_is_a_layout_error(tmp_path, capsys):
    path = tmp_path / "captions_val2017.json"
    path.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 5}]})
    )
    out = tmp_path / "r.json"
    assert main(["retrieval", "--model", "open_clip:RN50", "--data", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lacks 'caption'" in err and "Expected layout" in err and not out.exists()
