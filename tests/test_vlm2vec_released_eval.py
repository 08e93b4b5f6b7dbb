"""Released VLM2Vec models through the evaluator, offline on tiny random Qwen2-VL and LLaVA-Next bases:
`python -m evaluate mmeb --model ADAPTER --base-model BASE` embeds as `PeftModel.from_pretrained(base, adapter)`
with last-token pooling of the reference prompt (MMEB texts verbatim, trailing newline kept); the same row gives
the same token ids through `vlm2vec.train`'s data path and the evaluator's; the settings are part of the model
fingerprint; a blank candidate embeds as the empty text."""

from __future__ import annotations

import json

import pandas as pd
import torch
from test_vlm2vec_released import FAMILIES, _reference_embedding
from test_vlm2vec_released import adapter_dir as adapter_dir  # noqa: F401 (module fixture)
from test_vlm2vec_released import base_dir as base_dir  # noqa: F401 (module fixture)
from test_vlm2vec_released import family as family  # noqa: F401 (module fixture)
from transformers import AutoProcessor
from vlm2vec_helpers import color_image
from vlm2vec_helpers import single_thread as single_thread  # noqa: F401 (autouse fixture)

from core.protocol import EmbedInput
from evaluate.cache import model_fingerprint
from evaluate.cli import main
from evaluate.datasets import load_mmeb
from evaluate.encoding import open_image
from evaluate.results import EvalResult
from vlm2vec.data import ContrastiveCollator, MMEBTrainData
from vlm2vec.model import VLM2VecModel

P = "<|image_1|>"
RED, BLUE = (230, 20, 20), (20, 20, 230)


def _eval_fixture(root):
    """MMEB-eval: a classification query with MMEB's trailing newline, a blank candidate, and a WebQA-style
    text-only query holding a dangling placeholder."""
    images = root / "eval_images"
    images.mkdir(parents=True)
    color_image(RED).save(images / "red.png")
    color_image(BLUE).save(images / "blue.png")
    rows = {
        "qry_text": [f"{P} represent the given image\n", f"{P} what color is the sky ?\n"],
        "qry_img_path": ["red.png", "blue.png"],
        "tgt_text": [["red photo\n", "", "blue sky\n"], ["blue sky\n", "a red car\n", ""]],
        "tgt_img_path": [["", "", ""]] * 2,
    }
    (root / "OK-VQA").mkdir()
    pd.DataFrame(rows).to_parquet(root / "OK-VQA" / "test-00000-of-00001.parquet")
    web = {
        "qry_text": [f"{P} find the picture of the red car\n"],
        "qry_img_path": [""],
        "tgt_text": [[f"{P} represent the given image\n"] * 2],
        "tgt_img_path": [["red.png", "blue.png"]],
    }
    (root / "WebQA").mkdir()
    pd.DataFrame(web).to_parquet(root / "WebQA" / "test-00000-of-00001.parquet")
    return root


def _blank_embedding(model, processor):
    """The empty text as one attended pad token (no BOS in these tokenizers), last-token pooled."""
    ids = torch.tensor([[processor.tokenizer.pad_token_id]])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return torch.nn.functional.normalize(hidden.hidden_states[-1][0, -1].float(), dim=-1)


def test_adapter_through_evaluate_mmeb_with_base_model(family, base_dir, adapter_dir, tmp_path):  # noqa: F811
    from peft import PeftModel

    _, model_class, token = FAMILIES[family]
    moved = (
        tmp_path / "release"
    )  # the hub base of a release, unreachable here: --base-model gives the local one
    moved.mkdir()
    for file in adapter_dir.iterdir():
        (moved / file.name).write_bytes(file.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "TIGER-Lab/no-such-base-offline"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    data = _eval_fixture(tmp_path / "MMEB")
    out = tmp_path / "result.json"
    args = ["mmeb", "--model", str(moved), "--base-model", str(base_dir), "--data", str(data)]
    assert (
        main([*args, "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "3"]) == 0
    )
    result = EvalResult.load(out)
    assert result.model["config"]["base_model"] == str(base_dir)
    assert result.model["config"]["prompt_format"] == "reference"

    reference = PeftModel.from_pretrained(model_class.from_pretrained(base_dir), adapter_dir).eval()
    processor = AutoProcessor.from_pretrained(adapter_dir if family == "qwen2_vl" else base_dir)
    red, blue = color_image(RED), color_image(BLUE)

    def embed(text, image=None):
        if not text and image is None:
            return _blank_embedding(reference, processor)
        return _reference_embedding(reference, processor, EmbedInput(text=text, image=image), family, token)

    expected = {}
    queries = [embed(f"{P} represent the given image\n", red), embed(f"{P} what color is the sky ?\n", blue)]
    candidates = [
        [embed("red photo\n"), embed(""), embed("blue sky\n")],
        [embed("blue sky\n"), embed("a red car\n"), embed("")],
    ]
    scores = [torch.stack(c) @ q for q, c in zip(queries, candidates, strict=True)]
    expected["OK-VQA"] = 100.0 * sum(float(s[0] >= s[1:].max()) for s in scores) / len(scores)
    web_query = embed("find the picture of the red car\n")  # the dangling placeholder removed
    web = torch.stack([embed(f"{P} represent the given image\n", im) for im in (red, blue)]) @ web_query
    expected["WebQA"] = 100.0 * float(web[0] >= web[1])
    assert result.details["per_dataset"] == expected
    assert result.details["blank_candidates"] == {"OK-VQA": 2}

    # the evaluation path embeds every input exactly as the reference: the model load_model builds, on the inputs
    # load_mmeb reads (verbatim texts), through the protocol
    model = VLM2VecModel.from_pretrained(moved, base_model=str(base_dir))
    subset = {s.name: s for s in load_mmeb(data, ["OK-VQA", "WebQA"])}["OK-VQA"]
    pairs = zip(subset.query_texts, subset.query_images, strict=True)
    rows = [EmbedInput(text=t, image=open_image(p)) for t, p in pairs]
    rows += [EmbedInput(text=t) for t in subset.target_texts[0]]
    want = torch.stack([*queries, *candidates[0]])
    torch.testing.assert_close(model.encode(rows, batch_size=5), want, atol=2e-5, rtol=1e-4)


def test_settings_are_part_of_the_fingerprint(family, base_dir, adapter_dir):  # noqa: F811
    from evaluate.models import load_model

    default = load_model(str(adapter_dir))
    ours = load_model(str(adapter_dir), options={"prompt_format": "ours"})
    resized = load_model(str(adapter_dir), options={"image_size": 112})
    prints = {model_fingerprint(m) for m in (default, ours, resized)}
    assert len(prints) == 3
    assert model_fingerprint(load_model(str(adapter_dir))) == model_fingerprint(default)


def test_training_and_evaluation_token_ids_are_equal_for_the_same_row(family, base_dir, tmp_path):  # noqa: F811
    """One MMEB row as MMEB-train (through MMEBTrainData and the collator) and as MMEB-eval (through load_mmeb and
    the protocol's input): the same ids in both prompt formats, MMEB's trailing newline the pooled token; WebQA's
    text-only row with its dangling placeholder too."""
    train, evaluation = tmp_path / "train", tmp_path / "eval"
    for root in (train, evaluation / "eval_images"):
        root.mkdir(parents=True)
        color_image(RED).save(root / "red.png")
    query, web = f"{P} represent the given image\n", f"{P} find the picture of the red car\n"
    (train / "WebQA").mkdir()
    pd.DataFrame(
        {
            "qry": [query, web],
            "qry_image_path": ["red.png", ""],
            "pos_text": ["red photo\n", f"{P} represent the given image\n"],
            "pos_image_path": ["", "red.png"],
        }
    ).to_parquet(train / "WebQA" / "original-00000-of-00001.parquet")
    (evaluation / "WebQA").mkdir()
    pd.DataFrame(
        {
            "qry_text": [query, web],
            "qry_img_path": ["red.png", ""],
            "tgt_text": [["red photo\n", "blue sky\n"], [f"{P} represent the given image\n", "x\n"]],
            "tgt_img_path": [["", ""], ["red.png", "red.png"]],
        }
    ).to_parquet(evaluation / "WebQA" / "test-00000-of-00001.parquet")
    subset = load_mmeb(evaluation, ["WebQA"])[0]
    for prompt_format in ("reference", "ours"):
        model = VLM2VecModel.from_backbone(str(base_dir), prompt_format=prompt_format, max_text_tokens=256)
        data = MMEBTrainData(train, train, ["WebQA"], cap=None, selection="first")
        batch = ContrastiveCollator(model.preparer)([data[0], data[1]])
        for i in range(2):
            mask = batch.query_chunks[0]["attention_mask"][i].bool()
            train_ids = batch.query_chunks[0]["input_ids"][i][mask].tolist()
            image = subset.query_images[i]
            row = EmbedInput(text=subset.query_texts[i], image=open_image(image) if image else None)
            assert model.prepare([row])["input_ids"][0].tolist() == train_ids
            assert model.processor.tokenizer.convert_ids_to_tokens(train_ids[-1]) == "\n"
        target_mask = batch.target_chunks[0]["attention_mask"][0].bool()
        target_ids = batch.target_chunks[0]["input_ids"][0][target_mask].tolist()
        assert (
            model.prepare([EmbedInput(text=subset.target_texts[0][0])])["input_ids"][0].tolist() == target_ids
        )


def test_parquet_conversion_and_instructions_of_mmeb_train(tmp_path, caplog):
    """MMEB-train's `SUBSET/original/0000.parquet` (the hub's parquet conversion) is read; `qry_inst` becomes
    the query's instruction, which the prompt builder joins as `instruction + " " + text`."""
    root = tmp_path / "train"
    (root / "VisDial" / "original").mkdir(parents=True)
    color_image(RED).save(root / "red.png")
    pd.DataFrame(
        {
            "qry_inst": ["find the picture"],
            "qry": ["red car\n"],
            "qry_image_path": [""],
            "pos_text": [f"{P} represent the given image\n"],
            "pos_image_path": ["red.png"],
        }
    ).to_parquet(root / "VisDial" / "original" / "0000.parquet")
    data = MMEBTrainData(root, root, ["VisDial"], cap=None)
    example = data[0]
    assert example.query.instruction == "find the picture" and example.query.text == "red car\n"
    assert example.positives[0].image is not None
    try:
        MMEBTrainData(root, root, ["WebQA"], cap=None)
    except ValueError as error:
        message = str(error)
    assert "parquet conversion" in message and "save_to_disk" in message and "hub files" in message
