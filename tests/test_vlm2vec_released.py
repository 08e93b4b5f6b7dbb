"""TIGER-AI-Lab/VLM2Vec's released models, offline on tiny random Qwen2-VL and LLaVA-Next bases: a plain PEFT adapter
folder and a full-weight folder load through `VLM2VecModel.from_pretrained` and embed exactly as the reference
would (its prompt written out here, last-token pooling, L2 normalisation); the prompt builder gives training and
evaluation the same token ids; WebQA's dangling `<|image_1|>`; the v1 / v2 recipes.

The reference facts these tests encode (TIGER-AI-Lab/VLM2Vec):
- `src/model/processor.py` `VLM_IMAGE_TOKENS`: Qwen2-VL `<|image_pad|>` (no `<|vision_start|>` / `<|vision_end|>`),
  LLaVA-Next `<image>`, Phi-3.5-V `<|image_1|>`; MMEB's `<|image_1|>` is replaced in place
  (`src/data/dataset/mmeb_dataset.py`), texts otherwise verbatim; `process_input_text` joins
  `instruction + " " + text` and puts `TOKEN + " "` in front when the text has none.
- `src/model/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py` `get_rope_index` finds images by `<|vision_start|>`, so
  with the reference prompt every token gets 1-D text positions.
- `src/model/model.py` `_pooling`: `last` and `eos` both take the last attended token; `normalize` L2.
- `src/dataset.py` (V1): LLaVA-Next images are resized to 1344 x 1344 in training and evaluation.
"""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, Qwen2VLForConditionalGeneration
from vlm2vec_helpers import (
    color_image,
    save_tiny_llava_next,
    save_tiny_qwen2_vl,
    single_thread,  # noqa: F401 (autouse fixture)
)

from core.cli import ConfigParser
from core.protocol import EmbedInput
from vlm2vec import is_vlm2vec_checkpoint
from vlm2vec.adapters import MMEB_IMAGE_TOKEN, drop_image_token, get_family
from vlm2vec.config import TrainConfig
from vlm2vec.data import MMEB_TRAIN_SUBSETS, ContrastiveCollator, MMEBTrainData
from vlm2vec.model import VLM2VecModel
from vlm2vec.train import main

# The reference's LoRA targets (`ModelArguments.lora_target_modules` of src/arguments.py) and DoRA with Gaussian
# init (`MMEBModel.build` of src/model/model.py).
REFERENCE_TARGETS = [
    "qkv_proj",
    "o_proj",
    "gate_up_proj",
    "down_proj",
    "k_proj",
    "q_proj",
    "out_proj",
    "v_proj",
]
FAMILIES = {
    "qwen2_vl": (save_tiny_qwen2_vl, Qwen2VLForConditionalGeneration, "<|image_pad|>"),
    "llava_next": (save_tiny_llava_next, LlavaNextForConditionalGeneration, "<image>"),
}
REFERENCE_TARGET_REGEX = r"(.*\.)?(down_proj|gate_up_proj|k_proj|o_proj|out_proj|q_proj|qkv_proj|v_proj)"


def _mmeb_text(words: str) -> str:
    """An MMEB-style text: the placeholder, words of the tiny vocabulary, MMEB's trailing newline."""
    return f"{MMEB_IMAGE_TOKEN} {words}\n"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def base_dir(family, tmp_path_factory):
    save, _, _ = FAMILIES[family]
    return save(tmp_path_factory.mktemp(family) / "base", newline=True)


@pytest.fixture(scope="module")
def adapter_dir(family, base_dir, tmp_path_factory):
    """A reference-style release: peft's own `save_pretrained` of a DoRA adapter (non-zero, so it matters) over the
    base; the Qwen2-VL one carries its processor (as the reference's adapter repos do), the LLaVA-Next one not."""
    _, model_class, _ = FAMILIES[family]
    torch.manual_seed(1)
    base = model_class.from_pretrained(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=REFERENCE_TARGETS,
        init_lora_weights="gaussian",
        use_dora=True,
    )
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    out = tmp_path_factory.mktemp(f"{family}_adapter") / "release"
    peft_model.save_pretrained(out)
    if family == "qwen2_vl":
        AutoProcessor.from_pretrained(base_dir).save_pretrained(out)
    return out


def _rows() -> list[EmbedInput]:
    return [
        EmbedInput(text=_mmeb_text("represent the given image"), image=color_image((230, 20, 20))),
        EmbedInput(text="a red car\n"),
        EmbedInput(
            text="what color is this ?", instruction="find the caption", image=color_image((20, 20, 230))
        ),
        EmbedInput(text="the blue sky", instruction="find the picture"),
    ]


def _reference_prompt(row: EmbedInput, token: str) -> str:
    """The reference's prompt of a row, written out: MMEB's placeholder replaced in place, else
    `process_input_text` (`instruction + " " + text`, `TOKEN + " "` in front for an image)."""
    text = " ".join(part for part in (row.instruction, row.text) if part)
    if MMEB_IMAGE_TOKEN in text:
        return text.replace(MMEB_IMAGE_TOKEN, token)
    return f"{token} {text}" if row.image is not None else text


def _reference_embedding(model, processor, row: EmbedInput, family: str, token: str) -> torch.Tensor:
    """One row as the reference embeds it: the processor on its prompt, the last layer's hidden state of the
    last token (`hidden_states[-1]`, `_pooling`), L2-normalised; Qwen2-VL with 1-D positions for every token (the
    reference's `get_rope_index` sees no `<|vision_start|>`); LLaVA-Next images resized to 1344 x 1344 first."""
    image = row.image
    if image is not None and family == "llava_next":
        image = image.resize((1344, 1344))
    inputs = processor(
        text=[_reference_prompt(row, token)],
        images=[image] if image is not None else None,
        return_tensors="pt",
    )
    if family == "qwen2_vl":
        inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1])[None]
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
    return F.normalize(hidden[0, -1].float(), dim=-1)


def test_reference_prompts_per_family():
    """The reference format, family by family (VLM_IMAGE_TOKENS); ours unchanged."""
    qwen, llava, phi, idefics = (get_family(n) for n in ("qwen2_vl", "llava_next", "phi3_v", "idefics3"))
    mmeb = _mmeb_text("represent the given image")
    assert qwen.prompt(mmeb, None, True, "reference") == "<|image_pad|> represent the given image\n"
    assert qwen.prompt(mmeb, None, True, "ours") == (
        "<|vision_start|><|image_pad|><|vision_end|> represent the given image\n"
    )
    assert llava.prompt(mmeb, None, True, "reference") == "<image> represent the given image\n"
    assert phi.prompt(mmeb, None, True, "reference") == mmeb
    assert idefics.prompt(mmeb, None, True, "reference") == "<image> represent the given image\n"
    # process_input_text: instruction + " " + text, TOKEN + " " in front when the text has none
    assert qwen.prompt("what color ?", "find", True, "reference") == "<|image_pad|> find what color ?"
    assert llava.prompt("what color ?", "find", True, "ours") == "<image>\nfind what color ?"
    assert qwen.prompt("a car\n", "find", False, "reference") == "find a car\n"
    # a text whose leading placeholder was removed upstream gets its training prompt back
    assert qwen.prompt(mmeb.replace(MMEB_IMAGE_TOKEN, ""), None, True, "reference") == qwen.prompt(
        mmeb, None, True, "reference"
    )
    with pytest.raises(ValueError, match="has no image"):
        qwen.prompt(mmeb, None, False, "reference")
    with pytest.raises(ValueError, match="unknown prompt format"):
        qwen.prompt("x", None, False, "theirs")


def test_drop_image_token():
    assert drop_image_token(f"{MMEB_IMAGE_TOKEN} what is it ?\n") == "what is it ?\n"
    assert drop_image_token(f"what {MMEB_IMAGE_TOKEN} is it") == "what is it"
    assert drop_image_token(f"question :\n{MMEB_IMAGE_TOKEN}\nwhat") == "question :\n\nwhat"
    assert drop_image_token(f"what is it {MMEB_IMAGE_TOKEN}") == "what is it"


def test_peft_adapter_folder_embeds_as_peft_with_the_reference_prompt(
    family, base_dir, adapter_dir, tmp_path
):
    _, model_class, token = FAMILIES[family]
    assert is_vlm2vec_checkpoint(adapter_dir)
    model = VLM2VecModel.from_pretrained(adapter_dir)
    assert model.config.family == family and model.config.prompt_format == "reference"
    assert model.config.base_model == str(base_dir)
    assert model.config.lora is not None and model.config.lora.dora and model.config.lora.r == 4
    assert model.config.image_size == (1344 if family == "llava_next" else None)
    reference = PeftModel.from_pretrained(model_class.from_pretrained(base_dir), adapter_dir).eval()
    processor = AutoProcessor.from_pretrained(adapter_dir if family == "qwen2_vl" else base_dir)
    rows = _rows()
    expected = torch.stack([_reference_embedding(reference, processor, row, family, token) for row in rows])
    torch.testing.assert_close(model.encode(rows), expected, atol=2e-5, rtol=1e-4)  # batched, padded

    # our format differs on image rows (the test tells the formats apart)
    ours = VLM2VecModel.from_pretrained(adapter_dir, prompt_format="ours", image_size=0)
    assert ours.config.prompt_format == "ours" and ours.config.image_size is None
    assert not torch.allclose(ours.encode(rows[2:3]), expected[2:3], atol=1e-3)

    # a local copy of the base overrides the hub name in adapter_config.json
    copy = tmp_path / "base_copy"
    shutil.copytree(base_dir, copy)
    moved = tmp_path / "release"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "TIGER-Lab/no-such-base-offline"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert is_vlm2vec_checkpoint(moved)  # peft's recorded base class names the family
    overridden = VLM2VecModel.from_pretrained(moved, base_model=str(copy))
    assert overridden.config.base_model == str(copy)
    torch.testing.assert_close(overridden.encode(rows), expected, atol=2e-5, rtol=1e-4)

    # saved by us, it loads back in the recorded (reference) format
    saved = model.save_pretrained(tmp_path / "ours_export")
    assert json.loads((saved / "vlm2vec_config.json").read_text())["prompt_format"] == "reference"
    torch.testing.assert_close(
        VLM2VecModel.from_pretrained(saved).encode(rows), expected, atol=2e-5, rtol=1e-4
    )


def test_adapter_over_an_unsupported_or_unknown_base_is_not_ours(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "bert-base-uncased"}))
    assert not is_vlm2vec_checkpoint(folder)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {"base_model_name_or_path": str(tmp_path), "auto_mapping": {"base_model_class": "BertModel"}}
        )
    )
    assert not is_vlm2vec_checkpoint(folder)
    with pytest.raises(ValueError, match="not a supported VLM family"):
        VLM2VecModel.from_pretrained(folder)


def test_full_weight_folder_embeds_with_the_reference_prompt(family, base_dir, adapter_dir, tmp_path):
    """A released full model (here: the adapter merged into the base, saved by transformers) embeds as the
    reference does; plain folders we did not write default to the reference format."""
    _, model_class, token = FAMILIES[family]
    merged = PeftModel.from_pretrained(model_class.from_pretrained(base_dir), adapter_dir).merge_and_unload()
    full = tmp_path / "full"
    merged.save_pretrained(full)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(full)
    assert is_vlm2vec_checkpoint(full)
    model = VLM2VecModel.from_pretrained(full)
    assert model.config.prompt_format == "reference" and model.config.lora is None
    reference = model_class.from_pretrained(full).eval()
    processor = AutoProcessor.from_pretrained(full)
    rows = _rows()
    expected = torch.stack([_reference_embedding(reference, processor, row, family, token) for row in rows])
    torch.testing.assert_close(model.encode(rows), expected, atol=2e-5, rtol=1e-4)


def _write_subset(root, name: str, rows: list[dict]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / name / "original-00000-of-00001.parquet")


@pytest.mark.parametrize("prompt_format", ["reference", "ours"])
def test_training_and_evaluation_token_ids_are_equal(family, base_dir, tmp_path, prompt_format):
    """One MMEB row through `vlm2vec.train`'s path (MMEBTrainData -> ContrastiveCollator -> preparer) and through
    `encode`'s path (`prepare` of the same text and image): the same ids, MMEB's trailing newline kept (the
    pooled last token). An evaluation loader that only drops the placeholder gets the same ids in the reference
    format; one that also strips the newline does not."""
    (tmp_path / "images").mkdir()
    color_image((230, 20, 20)).save(tmp_path / "images" / "red.png")
    query = _mmeb_text("represent the given image")
    _write_subset(
        tmp_path,
        "ImageNet_1K",
        [dict(qry=query, qry_image_path="images/red.png", pos_text="red photo\n", pos_image_path="")],
    )
    model = VLM2VecModel.from_backbone(str(base_dir), prompt_format=prompt_format, max_text_tokens=256)
    data = MMEBTrainData(tmp_path, tmp_path, ["ImageNet_1K"], cap=None)
    batch = ContrastiveCollator(model.preparer)([data[0]])
    train_ids = batch.query_chunks[0]["input_ids"][batch.query_chunks[0]["attention_mask"].bool()].tolist()
    image = color_image((230, 20, 20))  # PNG is lossless: the pixels MMEBTrainData read back
    eval_batch = model.prepare([EmbedInput(text=query, image=image)])
    assert eval_batch["input_ids"][0].tolist() == train_ids
    tokenizer = model.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(train_ids[-1]) == "\n"
    target_ids = batch.target_chunks[0]["input_ids"][0].tolist()
    assert target_ids == model.prepare([EmbedInput(text="red photo\n")])["input_ids"][0].tolist()
    without_placeholder = model.prepare([EmbedInput(text=query.replace(MMEB_IMAGE_TOKEN, ""), image=image)])
    stripped = model.prepare([EmbedInput(text=query.replace(MMEB_IMAGE_TOKEN, "").strip(), image=image)])
    if prompt_format == "reference":
        assert without_placeholder["input_ids"][0].tolist() == train_ids
    assert stripped["input_ids"][0].tolist() != train_ids


def test_webqa_dangling_placeholder_is_removed_counted_and_trains(tmp_path, caplog):
    """WebQA's text-only queries still hold `<|image_1|>`: the row is kept without it, the count is in the data
    summary line, and a short `vlm2vec.train` run goes through those batches."""
    base = save_tiny_qwen2_vl(tmp_path / "base", newline=True)
    root = tmp_path / "mmeb"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, name in enumerate(["red", "green", "blue", "red"]):
        path = f"images/{name}_{i}.png"
        color_image({"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}[name], seed=i).save(
            root / path
        )
        rows.append(
            dict(
                qry=f"{MMEB_IMAGE_TOKEN} find the picture : which color is the {name} car ?\n",
                qry_image_path="",
                pos_text=f"{MMEB_IMAGE_TOKEN} represent the given image\n",
                pos_image_path=path,
            )
        )
    _write_subset(root, "WebQA", rows)
    with caplog.at_level(logging.INFO, logger="vlm2vec.data"):
        data = MMEBTrainData(root, root, ["WebQA"], cap=None)
    assert data.dangling_image_tokens == {"WebQA": 4}
    assert "dangling <|image_1|> removed from 4 text-only inputs" in caplog.text
    example = data[0]
    assert example.query.text == "find the picture : which color is the red car ?\n"
    assert example.positives[0].text.startswith(MMEB_IMAGE_TOKEN)  # the image row keeps its placeholder
    out = tmp_path / "run"
    args = ["--model", str(base), "--data", str(root), "--output-dir", str(out), "--subsets", "WebQA"]
    args += ["--batch-size", "2", "--steps", "2", "--warmup", "0", "--lr", "1e-3", "--lora-r", "2"]
    args += ["--lora-alpha", "4", "--precision", "fp32", "--device", "cpu", "--num-workers", "0"]
    args += ["--no-progress", "--save-every", "2", "--query-chunk-size", "1", "--target-chunk-size", "1"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert "removed from 4 text-only inputs" in caplog.text


def _recipe(name: str) -> dict:
    return ConfigParser(TrainConfig).recipe_values(f"recipes/{name}")


def test_v1_recipe_sets_the_reference_v1_defaults():
    values = _recipe("vlm2vec-v1.yaml")
    TrainConfig(**{**values, "data": "d", "output_dir": "o"})  # a complete, valid config
    expected = dict(
        model="microsoft/Phi-3.5-vision-instruct",
        trust_remote_code=True,
        prompt_format="reference",
        subsets=list(MMEB_TRAIN_SUBSETS),
        num_sample_per_subset=50_000,
        subset_selection="first",
        hard_negatives=False,
        batch_size=1024,
        query_chunk_size=2,
        target_chunk_size=2,
        tuning="dora",
        lora_r=16,
        lora_alpha=64,
        lora_dropout=0.1,
        lr=2e-5,
        steps=2000,
        warmup=200,
        temperature=0.02,
        pooling="last",
        normalize=True,
        max_text_tokens=256,
        num_crops=4,
    )
    assert {k: values[k] for k in expected} == expected
    assert values["lora_target_modules"] == REFERENCE_TARGET_REGEX


def test_v2_recipe_sets_the_reference_v2_defaults():
    values = _recipe("vlm2vec-v2.yaml")
    TrainConfig(**{**values, "data": "d", "output_dir": "o"})
    expected = dict(
        model="Qwen/Qwen2-VL-2B-Instruct",
        prompt_format="reference",
        subsets=list(MMEB_TRAIN_SUBSETS),
        num_sample_per_subset=None,
        subset_selection="first",
        subset_block_size=64,
        batch_size=1024,
        query_chunk_size=8,
        target_chunk_size=8,
        tuning="dora",
        lora_r=16,
        lora_alpha=64,
        lora_dropout=0.1,
        lr=5e-5,
        steps=5000,
        warmup=100,
        temperature=0.02,
        pooling="last",
        normalize=True,
        min_pixels=28 * 28 * 4,
        max_pixels=28 * 28 * 1280,
    )
    assert {k: values[k] for k in expected} == expected
    assert values["lora_target_modules"] == REFERENCE_TARGET_REGEX
    assert values["subset_caps"]["ImageNet_1K"] == 100_000 and values["subset_caps"]["VisDial"] == 130_000
    assert set(values["subset_caps"]) == set(MMEB_TRAIN_SUBSETS)
