"""``python -m align.export sentence-transformers``: the exported folder's ``SentenceTransformer.encode`` gives
AlignedModel's embeddings for texts and PIL images (built-in text modules with a prompt, or our own text module for
a decoder backbone), and the output folder rules protect existing work."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from backbone_helpers import save_tiny_qwen2
from integration_helpers import COCO, random_head_checkpoint
from PIL import Image
from sentence_transformers import SentenceTransformer

from align import AlignedModel, AlignmentHead, HeadConfig
from align.export import (
    BUILT_IN_TEXT_ROUTE,
    EXPORT_RECORD,
    OWN_TEXT_ROUTE,
    export_sentence_transformers,
)
from align.export import main as export_main

pytestmark = pytest.mark.slow

TEXTS = [
    "A man riding a wave on top of a surfboard.",
    "two plates of food",
    "A giraffe standing next to a tall tree in a field with other giraffes far behind it.",
    "dog",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_export")
    checkpoint = random_head_checkpoint(root / "ckpt")
    out = root / "st"
    assert export_main(["sentence-transformers", str(checkpoint), str(out)]) == 0
    return checkpoint, out


def test_encode_texts_and_images_equal_aligned_model(exported):
    checkpoint, out = exported
    st = SentenceTransformer(str(out), trust_remote_code=True)
    model = AlignedModel.from_pretrained(checkpoint)
    torch.testing.assert_close(
        st.encode(TEXTS, convert_to_tensor=True), model.encode_text(TEXTS), atol=1e-5, rtol=0
    )
    images = [Image.open(path) for path in sorted((COCO / "val2017").iterdir())[:5]]
    embedded = st.encode(images, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(embedded, model.encode_image(images), atol=1e-5, rtol=0)
    assert st.similarity_fn_name == "cosine" and st.get_embedding_dimension() == 64
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["checkpoint"] == str(checkpoint.resolve()) and record["text_route"] == BUILT_IN_TEXT_ROUTE
    assert record["head"] == model.config["head"]
    with pytest.raises(ValueError, match="cannot combine"):
        st.encode([{"text": TEXTS[0], "image": images[0]}])


def test_loading_needs_trust_remote_code(exported):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(exported[1]))


def _checkpoint(directory, head: HeadConfig, text_backbone: dict, seed: int):
    torch.manual_seed(seed)
    config = {
        "head": dataclasses.asdict(head),
        "image_backbone": {"model": "efficientnet-lite0"},
        "text_backbone": text_backbone,
    }
    return AlignedModel(AlignmentHead(head), config).save_pretrained(directory)


@pytest.mark.parametrize("kind", ["sentence_transformers_with_instruction", "decoder"])
def test_text_backbone_routes_and_instructions(kind, tmp_path):
    if kind == "decoder":  # not a sentence-transformers pipeline: our AlignedTextBackbone module
        qwen = save_tiny_qwen2(tmp_path / "qwen")
        head = HeadConfig(head="star", image_dim=1280, text_dim=32, target_dim=16, width_factor=2)
        text = {"model": str(qwen), "instruction": "find the photo", "pooling": "mean"}
        route, prompt = OWN_TEXT_ROUTE, None
    else:  # MiniLM's own modules, the instruction as the export's default prompt
        head = HeadConfig(head="mlp", image_dim=1280, text_dim=384, target_dim=16, hidden_dim=32)
        text = {"model": "all-MiniLM-L6-v2", "instruction": "query: "}
        route, prompt = BUILT_IN_TEXT_ROUTE, "query: "
    checkpoint = _checkpoint(tmp_path / "ckpt", head, text, seed=3)
    out = export_sentence_transformers(checkpoint, tmp_path / "st")
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["text_route"] == route and record["prompt"] == prompt
    st = SentenceTransformer(str(out), trust_remote_code=True)
    model = AlignedModel.from_pretrained(checkpoint)
    expected = model.encode_text(TEXTS)
    torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=0)
    plain = {key: value for key, value in text.items() if key != "instruction"}
    without = AlignedModel.from_pretrained(_checkpoint(tmp_path / "plain", head, plain, seed=3))
    assert not torch.allclose(without.encode_text(TEXTS), expected, atol=1e-3)  # the instruction is applied


def test_output_folder_rules(exported, tmp_path, capsys):
    checkpoint, _ = exported
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert export_main(["sentence-transformers", str(checkpoint), str(busy)]) == 2
    assert (busy / "notes.txt").read_text() == "keep me" and len(list(busy.iterdir())) == 1
    assert export_main(["sentence-transformers", str(checkpoint), str(checkpoint)]) == 2
    assert export_main(["sentence-transformers", str(tmp_path / "missing"), str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    assert export_main(["sentence-transformers", str(checkpoint), str(tmp_path / "file")]) == 2

    assert export_main(["sentence-transformers", str(checkpoint), str(busy), "--overwrite"]) == 0
    assert not (busy / "notes.txt").exists() and (busy / EXPORT_RECORD).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "busy",
        "file",
    ]  # no staging or replaced folder left
    with pytest.raises(SystemExit):
        export_main(["sentence-transformers", "--help"])
    assert "trust_remote_code=True" in capsys.readouterr().out
