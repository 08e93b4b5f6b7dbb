"""Tiny random VLMs (real transformers configs and processor classes) with a tokenizer built here; offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (30x faster here).

    Scoped to the modules that import it (set before their module fixtures) and restored after, so no other
    test runs with other numerics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = [
    "a",
    "an",
    "the",
    "cat",
    "dog",
    "bird",
    "car",
    "red",
    "green",
    "blue",
    "photo",
    "of",
    "find",
    "image",
    "caption",
    "query",
    "represent",
    "given",
    ":",
    ".",
    ",",
    "?",
    "instruct",
    "which",
    "is",
    "this",
    "what",
    "color",
    "animal",
    "picture",
    "sky",
    "tree",
    "house",
]


def word_tokenizer(
    special: list[str], eos: str, bos: str | None = None, newline: bool = False
) -> PreTrainedTokenizerFast:
    """A real fast tokenizer over `WORDS` plus `special` tokens (split on whitespace; `<pad>` is id 0).

    `newline=True`: "\n" is a token of its own (as in the real Qwen2 / Llama tokenizers), so a trailing newline
    changes the ids and the last token; otherwise all whitespace is dropped."""
    words = [*WORDS, "\n"] if newline else WORDS
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", *special, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if newline:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
                pre_tokenizers.Split("\n", behavior="isolated"),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = [token for token in special if token not in (eos, bos)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token=eos,
        bos_token=bos,
        additional_special_tokens=extra,
    )


def _save_tiny_qwen_vl(
    path: Path,
    dropout: float,
    seed: int,
    config_class: type[PretrainedConfig],
    model_class: type[PreTrainedModel],
    processor_class: type[ProcessorMixin],
    vision_config: dict[str, Any],
    newline: bool = False,
) -> Path:
    """Qwen2-VL or Qwen2.5-VL (same layout): a 2-layer 32-d decoder, a 1-layer vision tower; 56x56 images -> 4
    image tokens. `newline`: "\n" is a token (see `word_tokenizer`)."""
    torch.manual_seed(seed)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    special += ["<|image_pad|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(special, eos="<|endoftext|>", newline=newline)
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )
    ids = tokenizer.convert_tokens_to_ids
    config = config_class(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_dropout=dropout,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
            max_position_embeddings=512,
            bos_token_id=None,
            eos_token_id=ids("<|endoftext|>"),
            pad_token_id=0,
        ),
        vision_config=dict(
            depth=1, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, **vision_config
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model_class(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_qwen2_vl(path: Path, dropout: float = 0.0, seed: int = 0, newline: bool = False) -> Path:
    """Qwen2-VL (tiny, random); see `_save_tiny_qwen_vl`."""
    vision = dict(embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)
    return _save_tiny_qwen_vl(
        path, dropout, seed, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision, newline
    )


def save_tiny_qwen2_5_vl(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """Qwen2.5-VL (tiny, random; windowed vision attention with one full-attention block); see
    `_save_tiny_qwen_vl`."""
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        window_size=28,
        fullatt_block_indexes=[0],
    )
    return _save_tiny_qwen_vl(
        path, dropout, seed, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision
    )


def _tiny_llama(tokenizer: PreTrainedTokenizerFast, dropout: float) -> dict:
    """A 2-layer 32-d Llama decoder config over `tokenizer` (`<s>` / `</s>` as BOS / EOS)."""
    ids = tokenizer.convert_tokens_to_ids
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=dropout,
        pad_token_id=0,
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
    ).to_dict()


def save_tiny_llava_next(path: Path, dropout: float = 0.0, seed: int = 0, newline: bool = False) -> Path:
    """LLaVA-Next with a 2-layer CLIP tower at 28 px, a 2-layer Llama decoder, anyres grid of 28/56 px.
    `newline`: "\n" is a token (see `word_tokenizer`)."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(["<s>", "</s>", "<image>"], eos="</s>", bos="<s>", newline=newline)
    pinpoints = [[28, 28], [28, 56], [56, 28]]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ).to_dict(),
        text_config=_tiny_llama(tokenizer, dropout),
        image_token_index=ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaNextForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


IDEFICS3_IMAGE_SEQ_LEN = 4  # <image> tokens per 56x56 image: (56/14)^2 patches / scale_factor^2


def _save_tiny_idefics3_like(
    path: Path,
    dropout: float,
    seed: int,
    config_class: type[PretrainedConfig],
    model_class: type[PreTrainedModel],
    image_processor_class: type,
    processor_class: type[ProcessorMixin],
    processor_kwargs: dict[str, Any],
) -> Path:
    """Idefics3 or SmolVLM (same layout): 1-layer SigLIP tower at 56 px, pixel shuffle 2, 2-layer Llama decoder;
    one 56x56 image (no splitting) -> `IDEFICS3_IMAGE_SEQ_LEN` image tokens."""
    torch.manual_seed(seed)
    special = ["<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tokenizer = word_tokenizer(special, eos="</s>", bos="<s>")
    image_processor = image_processor_class(
        size={"longest_edge": 56}, max_image_size={"longest_edge": 56}, do_image_splitting=False
    )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        **processor_kwargs,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = config_class(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        text_config=_tiny_llama(tokenizer, dropout),
        image_token_id=ids("<image>"),
        scale_factor=2,
        pad_token_id=0,
    )
    model_class(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_idefics3(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """Idefics3 (tiny, random); see `_save_tiny_idefics3_like`."""
    return _save_tiny_idefics3_like(
        path,
        dropout,
        seed,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        {},
    )


def save_tiny_smolvlm(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """SmolVLM (tiny, random); its processor needs `num2words`; see `_save_tiny_idefics3_like`."""
    return _save_tiny_idefics3_like(
        path,
        dropout,
        seed,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        {"video_processor": SmolVLMVideoProcessor()},
    )


TINY_VLMS = {
    "qwen2_vl": save_tiny_qwen2_vl,
    "qwen2_5_vl": save_tiny_qwen2_5_vl,
    "llava_next": save_tiny_llava_next,
    "idefics3": save_tiny_idefics3,
    "smolvlm": save_tiny_smolvlm,
}


def color_image(rgb: tuple[int, int, int], size: int = 48, seed: int = 0) -> Image.Image:
    """A noisy solid-colour image."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb)[None, None, :] + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


TRAIN_COLORS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}


def write_tiny_mmeb_train(root: Path, fmt: str = "parquet", rows_per_subset: int = 8) -> Path:
    """MMEB-train layout: ImageNet_1K (image query -> class text, with hard negatives), MSCOCO_t2i (text query ->
    image), in `original` and `diverse_instruction` splits; images under root/images."""
    import pandas as pd

    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(TRAIN_COLORS)
    tables = {"ImageNet_1K": [], "MSCOCO_t2i": []}
    for i in range(rows_per_subset):
        name = names[i % len(names)]
        other = names[(i + 1) % len(names)]
        image = f"images/{name}_{i}.png"
        color_image(TRAIN_COLORS[name], seed=i).save(root / image)
        tables["ImageNet_1K"].append(
            dict(
                qry="<|image_1|> represent the given image",
                qry_image_path=image,
                pos_text=f"{name} photo",
                pos_image_path="",
                neg_text=f"{other} photo",
                neg_image_path="",
            )
        )
        tables["MSCOCO_t2i"].append(
            dict(
                qry=f"find image : a {name} photo",
                qry_image_path="",
                pos_text="<|image_1|> represent the image",
                pos_image_path=image,
                neg_text="",
                neg_image_path="",
            )
        )
    for subset, rows in tables.items():
        folder = root / subset
        if fmt == "save_to_disk":
            from datasets import Dataset, DatasetDict

            frame = pd.DataFrame(rows)
            DatasetDict(
                {s: Dataset.from_pandas(frame) for s in ("original", "diverse_instruction")}
            ).save_to_disk(str(folder))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("original", "diverse_instruction"):
            frame = pd.DataFrame(rows)
            if split == "diverse_instruction":
                frame["qry"] = frame["qry"].str.replace("represent", "instruct")
            if fmt == "parquet":
                frame.to_parquet(folder / f"{split}-00000-of-00001.parquet")
            else:
                frame.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    return root


def write_tiny_mmeb_eval(root: Path, name: str = "VOC2007") -> Path:
    """MMEB-eval layout (as evaluate.datasets.load_mmeb reads it): image query, 4 colour-name candidates."""
    import pandas as pd

    images = root / "eval_images"
    images.mkdir(parents=True, exist_ok=True)
    names = list(TRAIN_COLORS)
    rows = []
    for i in range(8):
        name_i = names[i % len(names)]
        path = f"{name}/{name_i}_{i}.png"
        (images / name).mkdir(exist_ok=True)
        color_image(TRAIN_COLORS[name_i], seed=100 + i).save(images / path)
        candidates = [f"{name_i} photo"] + [f"{n} photo" for n in names if n != name_i]
        rows.append(
            dict(
                qry_text="<|image_1|> represent the given image",
                qry_img_path=path,
                tgt_text=candidates,
                tgt_img_path=[""] * len(candidates),
            )
        )
    (root / name).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / name / "test-00000-of-00001.parquet")
    return root
