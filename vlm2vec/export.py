"""``python -m vlm2vec.export vllm CHECKPOINT OUT``: a VLM2Vec model as a folder vLLM's pooling runner serves.

The folder holds what a stock loader reads and nothing else to run:

- ``config.json`` + ``model*.safetensors``: the base architecture's own config (e.g.
  ``Qwen2VLForConditionalGeneration``, no ``auto_map``, no custom code) and its weights with any LoRA / DoRA
  adapter merged in;
- the processor and tokenizer files, with a ``chat_template.jinja`` that builds the model's own prompt from
  OpenAI-style chat content (image parts become the family's image token), for ``vllm serve``'s embeddings API;
- ``modules.json`` + ``1_Pooling/config.json`` (+ ``2_Normalize``): the pooling in the sentence-transformers layout
  that vLLM's ``get_pooling_config`` reads (``pooling_mode_lasttoken`` -> ``LAST``, a Normalize module ->
  normalised output);
- ``vlm2vec_config.json`` (merged): so ``VLM2VecModel.from_pretrained`` and ``python -m evaluate`` load the folder;
- ``vllm_export.json``: an :class:`ExportConfig`, the settings and the commands to serve it.

The folder is written beside OUT and renamed into place once complete. See docs/vlm2vec.md, "Serving with vLLM".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.precision import DTYPES
from core.staging import staged_folder
from vlm2vec.adapters import VLMFamily, get_family
from vlm2vec.model import CONFIG_NAME, VLM2VecModel

EXPORT_CONFIG = "vllm_export.json"
# vLLM's pooling types of our pooling modes (sentence-transformers Pooling flags in 1_Pooling/config.json).
POOLING_FLAGS = {
    "last": "pooling_mode_lasttoken",
    "eos": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
}
VLLM_POOLING_TYPES = {"last": "LAST", "eos": "LAST", "mean": "MEAN"}
_ST_POOLING_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


@dataclass
class ExportConfig:
    """Saved beside every vLLM export as ``vllm_export.json``."""

    source: str
    base_model: str
    family: str
    architecture: str
    dtype: str
    prompt_format: str
    image_token: str
    pooling: str
    vllm_pooling_type: str
    normalize: bool
    lora_merged: bool
    image_size: int | None = None
    max_text_tokens: int | None = None
    text_positions_1d: bool = False  # the reference's Qwen2-VL positions: every token 1-D (see docs)
    commands: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _family_of(path: Path) -> str | None:
    """The family recorded in a folder we wrote (or a training checkpoint's config), without loading anything."""
    for name, keys in ((CONFIG_NAME, ("family",)), ("config.json", ("model", "family"))):
        try:
            value: Any = json.loads((path / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return None


def check_exportable(family: VLMFamily) -> None:
    if family.trust_remote_code:
        raise ValueError(
            f"the {family.name} family has no stock transformers architecture (its config needs the hub's own "
            "code), so it cannot be exported as a stock folder; vLLM serves TIGER-Lab/VLM2Vec-Full (Phi-3.5-V) "
            "directly with --trust-remote-code"
        )


def chat_template(family: VLMFamily, prompt_format: str, eos: str | None) -> str:
    """A Jinja chat template that turns one user message of OpenAI-style content parts (``image`` /
    ``image_url`` and ``text``) into the prompt :meth:`VLMFamily.prompt` builds for an image row with the text
    parts joined by spaces: ``TOKEN body`` (``reference``) or ``TOKEN\\nbody`` (``ours``); a text-only message is
    its text. With ``eos`` (``eos`` pooling) the EOS token ends every prompt."""
    token = family.image_token(prompt_format)
    separator = " " if prompt_format == "reference" else "\n"
    suffix = eos or ""
    return (
        "{%- if messages | length != 1 -%}"
        "{{ raise_exception('an embedding request holds exactly one message') }}{%- endif -%}"
        "{%- set ns = namespace(texts=[], images=0) -%}"
        "{%- set content = messages[0]['content'] -%}"
        "{%- if content is string -%}{%- set ns.texts = [content] -%}{%- else -%}"
        "{%- for part in content -%}"
        "{%- if part['type'] == 'text' -%}{%- set ns.texts = ns.texts + [part['text']] -%}"
        "{%- elif part['type'] in ('image', 'image_url', 'image_pil') -%}{%- set ns.images = ns.images + 1 -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- if ns.images > 1 -%}{{ raise_exception('an embedding request holds at most one image') }}{%- endif -%}"
        "{%- set body = ns.texts | join(' ') -%}"
        f"{{%- if ns.images == 1 -%}}{token}{{%- if body -%}}{{{{ {json.dumps(separator)} }}}}"
        + ("{{ body.lstrip() }}" if prompt_format == "reference" else "{{ body }}")
        + f"{{%- endif -%}}{{%- else -%}}{{{{ body }}}}{{%- endif -%}}{suffix}"
    )


def _write_pooling(folder: Path, pooling: str, normalize: bool, hidden_size: int) -> None:
    """modules.json + 1_Pooling/config.json (+ 2_Normalize/) in the sentence-transformers layout vLLM reads."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    flags = {name: name == POOLING_FLAGS[pooling] for name in _ST_POOLING_FLAGS}
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden_size, **flags, "include_prompt": True}, indent=2)
        + "\n"
    )


def _commands(out: Path, config: ExportConfig) -> dict[str, str]:
    pooler = json.dumps({"pooling_type": config.vllm_pooling_type, "use_activation": config.normalize})
    return {
        "serve": f"vllm serve {out} --runner pooling --convert embed --pooler-config '{pooler}'",
        "offline": f"LLM(model={str(out)!r}, runner='pooling', convert='embed').embed("
        "{'prompt': PROMPT, 'multi_modal_data': {'image': IMAGE}})",
    }


def _prepare_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; choose another folder or pass --overwrite")


def export_vllm(
    checkpoint: str | Path,
    out: str | Path,
    base_model: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> ExportConfig:
    """Write the vLLM-ready folder of a VLM2Vec checkpoint (see the module docstring); returns its config."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    _prepare_destination(out, overwrite)
    recorded = _family_of(checkpoint)
    if recorded is not None:
        check_exportable(get_family(recorded))
    model = VLM2VecModel.from_pretrained(checkpoint, dtype="float32", base_model=base_model)
    check_exportable(model.family)
    merged = model.config.lora is not None and not model.config.merged
    if merged:
        model.merge_lora()  # in float32, then cast: the merge adds no rounding of its own
    backbone = model._base().to(DTYPES[dtype])
    backbone._hf_peft_config_loaded = False  # a merged model saves as a plain one
    with staged_folder(out) as staging:
        backbone.save_pretrained(staging, safe_serialization=True)
        eos = model.processor.tokenizer.eos_token if model.config.pooling == "eos" else None
        template = chat_template(model.family, model.config.prompt_format, eos)
        model.processor.chat_template = template
        model.processor.tokenizer.chat_template = template
        model.processor.save_pretrained(staging)
        _write_pooling(
            staging,
            model.config.pooling,
            model.config.normalize,
            backbone.config.get_text_config().hidden_size,
        )
        record = _merged_config(model)
        (staging / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
        architecture = (backbone.config.architectures or [type(backbone).__name__])[0]
        config = ExportConfig(
            source=str(checkpoint),
            base_model=model.config.base_model,
            family=model.family.name,
            architecture=architecture,
            dtype=dtype,
            prompt_format=model.config.prompt_format,
            image_token=model.family.image_token(model.config.prompt_format),
            pooling=model.config.pooling,
            vllm_pooling_type=VLLM_POOLING_TYPES[model.config.pooling],
            normalize=model.config.normalize,
            lora_merged=merged or model.config.merged,
            image_size=model.config.image_size,
            max_text_tokens=model.config.max_text_tokens,
            text_positions_1d=model.config.prompt_format == "reference"
            and model.family.reference_text_positions,
        )
        config.commands = _commands(out, config)
        (staging / EXPORT_CONFIG).write_text(config.to_json())
    return config


def _merged_config(model: VLM2VecModel) -> dict[str, Any]:
    """The model's config as the export's own: full weights in the folder (merged), the base kept as a record."""
    record = model.config.to_dict()
    record["merged"] = True
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlm2vec.export", description="Export a VLM2Vec model for serving elsewhere."
    )
    sub = parser.add_subparsers(dest="target", required=True)
    p = sub.add_parser(
        "vllm",
        help="merged weights + stock config + processor + pooling files for vLLM's pooling runner",
        description=__doc__.split("\n\n", 1)[1].split("\n\nThe folder is written")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="a VLM2Vec folder VLM2VecModel.from_pretrained loads")
    p.add_argument("out", type=Path, help="the folder to write (must be empty or absent)")
    p.add_argument("--base-model", default=None, help="base model of a LoRA checkpoint (e.g. a local copy)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="weights dtype of the export (default float32)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is not empty")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = export_vllm(args.checkpoint, args.out, args.base_model, args.dtype, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)  # noqa: T201
        return 2
    print(f"wrote {args.out} ({config.architecture}, {config.vllm_pooling_type} pooling)")  # noqa: T201
    print(f"serve: {config.commands['serve']}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
