"""`python -m vlm2vec.export vllm`: a LoRA VLM2Vec checkpoint on a tiny random Qwen2-VL, exported and loaded back
with plain transformers (the architecture class its stock config.json names, the processor and chat template of
the folder), embeds as `VLM2VecModel` does: last token of the last hidden layer, L2-normalised.

The pooling files are read the way vLLM's `get_pooling_config` (vllm/transformers_utils/config.py) reads them:
the `sentence_transformers.models.Pooling` entry of modules.json, its config's flags that are `true`, each name
stripped of `pooling_mode_`, cut at the first `_`, `lasttoken` -> `last`, upper-cased; a
`sentence_transformers.models.Normalize` entry -> normalised output.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from vlm2vec_helpers import (
    color_image,
    save_tiny_qwen2_vl,
    single_thread,  # noqa: F401 (autouse fixture)
)

from core.protocol import EmbedInput
from vlm2vec.export import EXPORT_CONFIG, export_vllm, main
from vlm2vec.model import LoraSettings, VLM2VecModel

FORMATS = {"ours": "<|vision_start|><|image_pad|><|vision_end|>", "reference": "<|image_pad|>"}


def _rows() -> list[EmbedInput]:
    return [
        EmbedInput(
            text="what color is this ?", instruction="find the caption", image=color_image((230, 20, 20))
        ),
        EmbedInput(text="a blue car", instruction="find the picture"),
        EmbedInput(image=color_image((20, 20, 230), seed=3)),
        EmbedInput(text="the green tree\n"),
    ]


def _expected_prompt(row: EmbedInput, prompt_format: str) -> str:
    """The documented prompt, written out: instruction and text joined by a space; an image row starts with the
    family's image token, then a space (reference) or a newline (ours)."""
    body = " ".join(part for part in (row.instruction, row.text) if part)
    if row.image is None:
        return body
    token = FORMATS[prompt_format]
    if not body:
        return token
    return f"{token} {body.lstrip()}" if prompt_format == "reference" else f"{token}\n{body}"


def _messages(row: EmbedInput) -> list[dict]:
    """One OpenAI-style chat message, as a client of `vllm serve`'s embeddings API sends it."""
    content = [{"type": "image"}] if row.image is not None else []
    content += [{"type": "text", "text": part} for part in (row.instruction, row.text) if part]
    return [{"role": "user", "content": content}]


def _vllm_pooling(folder) -> tuple[str | None, bool]:
    """(pooling type, normalize) as vLLM's get_pooling_config derives them from the folder."""
    modules = json.loads((folder / "modules.json").read_text())
    pooling = next(m for m in modules if m["type"] == "sentence_transformers.models.Pooling")
    normalize = any(m["type"] == "sentence_transformers.models.Normalize" for m in modules)
    flags = json.loads((folder / pooling["path"] / "config.json").read_text())
    types = []
    for key, value in flags.items():
        if value is True:
            name = key.replace("pooling_mode_", "").split("_", 1)[0]
            types.append("LAST" if "lasttoken" in name else name.upper())
    sequence_types = [t for t in types if t in ("CLS", "LAST", "MEAN")]
    assert len(sequence_types) == 1, types
    return sequence_types[0], normalize


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "base", newline=True)


@pytest.fixture(scope="module", params=sorted(FORMATS))
def lora_checkpoint(request, base_dir, tmp_path_factory):
    """Our LoRA checkpoint (adapter only) over the base, with non-zero adapters so the merge matters."""
    torch.manual_seed(2)
    model = VLM2VecModel.from_backbone(str(base_dir), prompt_format=request.param)
    model.add_lora(LoraSettings(r=4, alpha=16, dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / request.param), request.param


def _plain_transformers_embeddings(folder, rows, prompt_format: str) -> torch.Tensor:
    config = json.loads((folder / "config.json").read_text())
    model_class = getattr(transformers, config["architectures"][0])
    model = model_class.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    out = []
    for row in rows:
        prompt = processor.apply_chat_template(_messages(row), tokenize=False)
        assert prompt == _expected_prompt(row, prompt_format)
        inputs = processor(
            text=[prompt], images=[row.image] if row.image is not None else None, return_tensors="pt"
        )
        if prompt_format == "reference":  # the reference's positions: 1-D for every token (docs/vlm2vec.md)
            inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1])[None]
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
        out.append(F.normalize(hidden[0, -1].float(), dim=-1))
    return torch.stack(out)


def test_export_loads_in_plain_transformers_and_embeds_like_vlm2vec(lora_checkpoint, base_dir, tmp_path):
    checkpoint, prompt_format = lora_checkpoint
    out = tmp_path / "served"
    assert main(["vllm", str(checkpoint), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"] and "auto_map" not in config
    weight_files = sorted(out.glob("*.safetensors"))
    assert weight_files
    for path in weight_files:
        with safe_open(str(path), framework="pt") as weights:
            assert not [k for k in weights.keys() if "lora" in k]  # noqa: SIM118
    assert _vllm_pooling(out) == ("LAST", True)
    record = json.loads((out / EXPORT_CONFIG).read_text())
    assert record["lora_merged"] and record["prompt_format"] == prompt_format
    assert record["text_positions_1d"] == (prompt_format == "reference")
    assert not list(tmp_path.glob(".served.*"))  # the staging folder was renamed into place

    rows = _rows()
    ours = VLM2VecModel.from_pretrained(checkpoint).encode(rows)
    plain = _plain_transformers_embeddings(out, rows, prompt_format)
    torch.testing.assert_close(plain, ours, atol=2e-5, rtol=1e-4)
    base = VLM2VecModel.from_backbone(str(base_dir), prompt_format=prompt_format).encode(rows)
    assert (base - ours).norm(dim=-1).min() > 0.1  # the adapter changes every embedding: the merge matters
    reloaded = VLM2VecModel.from_pretrained(out)  # our own loader reads the export as full weights
    assert reloaded.config.merged and reloaded.config.prompt_format == prompt_format
    torch.testing.assert_close(reloaded.encode(rows), ours, atol=2e-5, rtol=1e-4)


def test_export_refuses_a_non_empty_destination_before_loading(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["vllm", str(tmp_path / "absent"), str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not empty"):
        export_vllm(tmp_path, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
