"""A VLM turned into an embedding model: prompt per family, last-token pooling, L2 normalisation, LoRA/DoRA.

`VLM2VecModel.from_pretrained` loads our own folders (`vlm2vec_config.json`), and also what TIGER-AI-Lab/VLM2Vec
released: a plain PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`, the base named in
`base_model_name_or_path`) or a full-weight folder of a supported family (a transformers `config.json`). Folders we
did not write are prompted in the ``reference`` format by default, ours in the format recorded when they were saved
(``ours`` for folders from before the field existed).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from core.precision import DTYPES
from core.protocol import EmbedInput
from vlm2vec.adapters import (
    FAMILIES,
    IMAGE_OPTIONS,
    VLMFamily,
    check_prompt_format,
    family_for,
    family_for_architecture,
    get_family,
)
from vlm2vec.inputs import InputPreparer
from vlm2vec.pooling import POOLING_MODES, pool

logger = logging.getLogger(__name__)

CONFIG_NAME = "vlm2vec_config.json"
TRAIN_FORMAT = "vlm2vec-train-v1"  # config.json "format" of vlm2vec.train checkpoints
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    dora: bool = False
    target_modules: str | None = None  # None: the family's decoder projections


@dataclass
class VLM2VecConfig:
    """Saved beside every VLM2Vec model as `vlm2vec_config.json`."""

    base_model: str
    family: str
    pooling: str = "last"
    normalize: bool = True
    temperature: float = 0.02
    max_text_tokens: int | None = None
    padding_side: str | None = None  # None: the family's default
    lora: LoraSettings | None = None
    merged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_format: str = "ours"  # see vlm2vec.adapters; folders saved before this field are "ours"
    image_size: int | None = None  # square resize of every image before the processor (None: none)
    num_crops: int | None = None  # Phi-3.5-V processor crops (None: the processor's own)
    min_pixels: int | None = (
        None  # Qwen2-VL / Qwen2.5-VL image processor pixel bounds (None: the processor's)
    )
    max_pixels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLM2VecConfig:
        data = dict(data)
        if data.get("lora") is not None:
            data["lora"] = LoraSettings(**data["lora"])
        return cls(**data)


def _load_backbone(
    name_or_path: str, family: VLMFamily, dtype: torch.dtype, trust_remote_code: bool
) -> nn.Module:
    if family.trust_remote_code and not trust_remote_code:
        raise ValueError(
            f"the {family.name} family runs the model's own code from the hub; pass --trust-remote-code "
            "(trust_remote_code=True) if you trust it"
        )
    model_class = getattr(transformers, family.model_class)
    kwargs = {"trust_remote_code": True} if family.trust_remote_code else {}
    return model_class.from_pretrained(name_or_path, dtype=dtype, **kwargs)


def _check_image_options(family: VLMFamily, options: dict[str, int | None]) -> None:
    unsupported = sorted(
        name for name, value in options.items() if value is not None and name not in family.image_options
    )
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)} cannot be set for the {family.name} family (its processor takes "
            f"{', '.join(family.image_options) or 'none of ' + ', '.join(IMAGE_OPTIONS)})"
        )


def _load_processor(name_or_path: str, family: VLMFamily, config: VLM2VecConfig, trust_remote_code: bool):
    """The family's processor with the config's padding side and image settings (num_crops, min/max pixels)."""
    kwargs: dict[str, Any] = (
        {"trust_remote_code": True} if family.trust_remote_code and trust_remote_code else {}
    )
    if config.num_crops is not None:
        kwargs["num_crops"] = config.num_crops
    processor = transformers.AutoProcessor.from_pretrained(name_or_path, **kwargs)
    processor.tokenizer.padding_side = config.padding_side or family.padding_side
    if config.min_pixels is not None or config.max_pixels is not None:
        # Qwen2-VL / Qwen2.5-VL image processors keep the pixel bounds as size shortest_edge / longest_edge.
        size = dict(processor.image_processor.size)
        if config.min_pixels is not None:
            size["shortest_edge"] = config.min_pixels
        if config.max_pixels is not None:
            size["longest_edge"] = config.max_pixels
        processor.image_processor.size = {k: v for k, v in size.items() if v is not None}
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is not None:  # the same bounds per video frame
            frame_size = {k: v for k, v in dict(video_processor.size).items() if v is not None}
            frame_size |= {k: size[k] for k in ("shortest_edge", "longest_edge") if size.get(k) is not None}
            video_processor.size = frame_size
    return processor


_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


def _has_processor(path: Path) -> bool:
    return any((path / name).is_file() for name in _PROCESSOR_FILES)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def is_adapter_folder(path: str | Path) -> bool:
    """A plain PEFT adapter folder (`adapter_config.json`), not one of ours (no `vlm2vec_config.json`)."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / CONFIG_NAME).is_file()


def _config_model_type(name_or_path: str, local_only: bool) -> str | None:
    """`model_type` of a model's raw config.json (a local folder, or the hub cache / hub), without running any of
    its code; None when it cannot be read."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return _read_json(local).get("model_type")
    if Path(name_or_path).is_dir():
        return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(cached, str):
            return _read_json(Path(cached)).get("model_type")
        if local_only:
            return None
        return _read_json(Path(hf_hub_download(name_or_path, "config.json"))).get("model_type")
    except Exception:  # no hub access, no such repo, a malformed id: unknown
        return None


def adapter_family(
    path: str | Path, base_model: str | None = None, local_only: bool = False
) -> VLMFamily | None:
    """The family of a PEFT adapter folder's base: from the base's config.json (a local folder, the hub cache, or
    the hub unless `local_only`), else from peft's recorded `base_model_class`, else from a config.json the adapter
    folder itself carries; None when none of these names a supported family."""
    path = Path(path)
    adapter = _read_json(path / ADAPTER_CONFIG)
    base = base_model or adapter.get("base_model_name_or_path")
    model_type = _config_model_type(str(base), local_only) if base else None
    if model_type is None:
        auto = adapter.get("auto_mapping") or {}
        family = family_for_architecture(str(auto.get("base_model_class", "")))
        if family is not None:
            return family
        model_type = _read_json(path / "config.json").get("model_type")
    if not model_type:
        return None
    try:
        return family_for(str(model_type))
    except ValueError:
        return None


def _lora_settings_from_peft(adapter: dict[str, Any]) -> LoraSettings:
    """Our LoRA record of a peft `adapter_config.json` (a target list becomes the equivalent peft regex)."""
    targets = adapter.get("target_modules")
    if isinstance(targets, (list, tuple)):
        names = "|".join(sorted(re.escape(str(t)) for t in targets))
        targets = rf"(.*\.)?({names})"  # peft matches a list entry as the whole name or a dotted suffix
    return LoraSettings(
        r=int(adapter.get("r", 8)),
        alpha=int(adapter.get("lora_alpha", 8)),
        dropout=float(adapter.get("lora_dropout", 0.0)),
        dora=bool(adapter.get("use_dora", False)),
        target_modules=targets,
    )


def detect_family(name_or_path: str, trust_remote_code: bool = False) -> VLMFamily:
    config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return family_for(config.model_type)


def _is_training_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == TRAIN_FORMAT


def _image_settings(
    family: VLMFamily,
    prompt_format: str,
    image_size: int | None = None,
    num_crops: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """The config's prompt format and image settings: `image_size` None takes the format's default (the
    reference's square resize of the family), 0 means no resize; processor options the family lacks are refused."""
    check_prompt_format(prompt_format)
    _check_image_options(family, dict(num_crops=num_crops, min_pixels=min_pixels, max_pixels=max_pixels))
    if image_size is None:
        image_size = family.reference_image_size if prompt_format == "reference" else None
    if image_size is not None and image_size < 0:
        raise ValueError(f"image_size must be >= 0 (0: no resize), got {image_size}")
    return dict(
        prompt_format=prompt_format,
        image_size=image_size or None,
        num_crops=num_crops,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )


def _apply_overrides(
    config: VLM2VecConfig, family: VLMFamily, prompt_format: str | None, overrides: dict[str, int | None]
) -> None:
    """Set a loaded config's prompt format / image settings where the caller gave them."""
    if prompt_format is not None:
        check_prompt_format(prompt_format)
        config.prompt_format = prompt_format
    _check_image_options(family, {k: v for k, v in overrides.items() if k != "image_size"})
    for name, value in overrides.items():
        if value is not None:
            setattr(config, name, (value or None) if name == "image_size" else value)


class VLM2VecModel(nn.Module):
    """Embeds (image, instruction, text) rows with one VLM; queries and targets share it.

    `forward(batch)` takes what `prepare` returns and gives `[B, D]` float32 embeddings (L2-normalised when
    `config.normalize`); `encode(inputs)` is the evaluation protocol (objects with `.text`, `.image`,
    `.instruction`, e.g. `core.protocol.EmbedInput`).
    """

    def __init__(self, backbone: nn.Module, processor, config: VLM2VecConfig) -> None:
        super().__init__()
        if config.pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {config.pooling!r}; choose one of {POOLING_MODES}")
        check_prompt_format(config.prompt_format)
        self.backbone = backbone
        self.processor = processor
        self.config = config
        self.family = get_family(config.family)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        family: str | None = None,
        pooling: str = "last",
        normalize: bool = True,
        temperature: float = 0.02,
        max_text_tokens: int | None = None,
        padding_side: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        prompt_format: str = "ours",
        image_size: int | None = None,
        num_crops: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> VLM2VecModel:
        """A base VLM (hub id or local dir) as an untrained embedding model: the zero-shot baseline, or the start
        of training.

        `prompt_format` is ``ours`` (what `vlm2vec.train` writes) or ``reference`` (TIGER-AI-Lab/VLM2Vec's). The
        image settings: `image_size` resizes every image to a square first (None: the format's default, which is
        the reference's 1344 for LLaVA-Next in the ``reference`` format and none otherwise; 0: no resize),
        `num_crops` (Phi-3.5-V) and `min_pixels` / `max_pixels` (Qwen2-VL, Qwen2.5-VL) go to the processor."""
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        check_prompt_format(prompt_format)
        adapter = get_family(family) if family else detect_family(name_or_path, trust_remote_code)
        config = VLM2VecConfig(
            base_model=str(name_or_path),
            family=adapter.name,
            pooling=pooling,
            normalize=normalize,
            temperature=temperature,
            max_text_tokens=max_text_tokens,
            padding_side=padding_side,
            **_image_settings(adapter, prompt_format, image_size, num_crops, min_pixels, max_pixels),
        )
        backbone = _load_backbone(name_or_path, adapter, DTYPES[dtype], trust_remote_code)
        processor = _load_processor(name_or_path, adapter, config, trust_remote_code)
        return cls(backbone.to(device), processor, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        trainable: bool = False,
        device: str | torch.device = "cpu",
        base_model: str | None = None,
        prompt_format: str | None = None,
        image_size: int | None = None,
        num_crops: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> VLM2VecModel:
        """Load a VLM2Vec model from a directory:

        - what `save_pretrained` wrote (`vlm2vec_config.json`: LoRA adapter over its base, or full weights), a
          training run (its `final/`) or a `checkpoints/step_N` dir: in its recorded prompt format;
        - a plain PEFT adapter folder (TIGER-AI-Lab/VLM2Vec's LoRA releases): the base named by its
          `adapter_config.json` (`base_model` overrides it, e.g. a local copy), with the adapter unmerged;
        - a full-weight folder of a supported family (a transformers `config.json`; a released full model, or a
          base VLM for the zero-shot baseline).

        The last two are prompted in the ``reference`` format unless `prompt_format` says otherwise. The image
        settings (see `from_backbone`) override the recorded ones when given.
        """
        path = Path(path)
        if prompt_format is not None:
            check_prompt_format(prompt_format)
        overrides = dict(
            image_size=image_size, num_crops=num_crops, min_pixels=min_pixels, max_pixels=max_pixels
        )
        if not (path / CONFIG_NAME).is_file() and (path / "final" / CONFIG_NAME).is_file():
            path = path / "final"  # a training run directory: its exported model
        if _is_training_checkpoint(path):
            return cls._from_training_checkpoint(
                path, dtype, trust_remote_code, device, base_model, prompt_format, overrides
            )
        if is_adapter_folder(path):
            return cls._from_peft_adapter(
                path, dtype, trust_remote_code, trainable, device, base_model, prompt_format, overrides
            )
        if not (path / CONFIG_NAME).is_file():
            return cls.from_backbone(
                str(path),
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                device=device,
                prompt_format=prompt_format or "reference",
                **overrides,
            )
        config = VLM2VecConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
        adapter = get_family(config.family)
        _apply_overrides(config, adapter, prompt_format, overrides)
        if base_model is not None:
            config.base_model = base_model
        if config.lora is not None and not config.merged:
            from peft import PeftModel

            base = _load_backbone(config.base_model, adapter, DTYPES[dtype], trust_remote_code)
            backbone = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
        else:
            backbone = _load_backbone(str(path), adapter, DTYPES[dtype], trust_remote_code)
        processor = _load_processor(str(path), adapter, config, trust_remote_code)
        return cls(backbone.to(device), processor, config)

    @classmethod
    def _from_peft_adapter(
        cls,
        path: Path,
        dtype: str,
        trust_remote_code: bool,
        trainable: bool,
        device: str | torch.device,
        base_model: str | None,
        prompt_format: str | None,
        overrides: dict[str, int | None],
    ) -> VLM2VecModel:
        """A plain PEFT adapter folder: its base (from `adapter_config.json`, or `base_model`) with the adapter on
        top, unmerged (merging changes the numbers by rounding only); the processor from the folder when it has one
        (the reference saves it there), else from the base."""
        from peft import PeftModel

        adapter_config = _read_json(path / ADAPTER_CONFIG)
        base = base_model or adapter_config.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path); pass base_model="
            )
        family = adapter_family(path, base)
        if family is None:
            raise ValueError(
                f"the base {base!r} of the adapter {path} is not a supported VLM family "
                f"({', '.join(sorted(FAMILIES))}), or its config.json cannot be read; pass "
                "base_model= a local copy of the base"
            )
        format_ = prompt_format or "reference"
        config = VLM2VecConfig(
            base_model=str(base),
            family=family.name,
            lora=_lora_settings_from_peft(adapter_config),
            **_image_settings(family, format_, **overrides),
        )
        backbone = PeftModel.from_pretrained(
            _load_backbone(str(base), family, DTYPES[dtype], trust_remote_code),
            str(path),
            is_trainable=trainable,
        )
        source = str(path) if _has_processor(path) else str(base)
        processor = _load_processor(source, family, config, trust_remote_code)
        return cls(backbone.to(device), processor, config)

    @classmethod
    def _from_training_checkpoint(
        cls,
        path: Path,
        dtype: str,
        trust_remote_code: bool,
        device: str | torch.device,
        base_model: str | None = None,
        prompt_format: str | None = None,
        overrides: dict[str, int | None] | None = None,
    ) -> VLM2VecModel:
        """A `checkpoints/step_N` directory of `vlm2vec.train`: its base model plus the trained weights."""
        from core.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        config = VLM2VecConfig.from_dict(checkpoint.config["model"])
        _apply_overrides(config, get_family(config.family), prompt_format, overrides or {})
        model = cls.from_backbone(
            base_model or config.base_model,
            family=config.family,
            pooling=config.pooling,
            normalize=config.normalize,
            temperature=config.temperature,
            max_text_tokens=config.max_text_tokens,
            padding_side=config.padding_side,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            prompt_format=config.prompt_format,
            image_size=config.image_size or 0,
            num_crops=config.num_crops,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )
        if config.lora is not None:
            model.add_lora(config.lora)
        model.load_trainable_state_dict(checkpoint.model_state)
        return model.to(device)

    def add_lora(self, settings: LoraSettings) -> None:
        """Wrap the backbone with peft LoRA (or DoRA); only the adapters train afterwards."""
        from peft import LoraConfig, get_peft_model

        if self.config.lora is not None:
            raise ValueError("this model already has LoRA adapters")
        target = settings.target_modules or self.family.lora_target_modules
        lora_config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=target,
            use_dora=settings.dora,
        )
        self.backbone = get_peft_model(self.backbone, lora_config)
        self.config.lora = LoraSettings(settings.r, settings.alpha, settings.dropout, settings.dora, target)

    def gradient_checkpointing_enable(self) -> None:
        self._base().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._base().config.use_cache = False

    def merge_lora(self) -> None:
        """Fold LoRA/DoRA weights into the backbone (for export); training adapters stops here."""
        if self.config.lora is None or self.config.merged:
            raise ValueError("no unmerged LoRA adapters to merge")
        self.backbone = self.backbone.merge_and_unload()
        self.config.merged = True

    def save_pretrained(self, path: str | Path, merge_lora: bool = False) -> Path:
        """Write weights (safetensors; the LoRA adapter alone unless merged), processor and config."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if merge_lora:
            self.merge_lora()
        self.backbone.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
        (path / CONFIG_NAME).write_text(self.config.to_json())
        return path

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The parameters that train (LoRA adapters, or everything), detached, for checkpoints."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = trainable - set(state)
        unexpected = set(state) - trainable
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the model's trainable parameters: {len(missing)} missing "
                f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]}); "
                "was it trained with the same model and LoRA settings?"
            )
        self.load_state_dict(state, strict=False)

    def _base(self) -> nn.Module:
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    # ---------------------------------------------------------------- inputs
    @property
    def preparer(self) -> InputPreparer:
        """The picklable input builder (prompt, truncation, processor) for DataLoader workers."""
        return InputPreparer(
            self.family,
            self.processor,
            self.config.pooling,
            self.config.max_text_tokens,
            self.config.prompt_format,
            self.config.image_size,
        )

    def prepare(self, rows: Sequence[Any]) -> dict[str, Tensor]:
        """Processor inputs for rows with `.text`, `.image` (PIL or None) and `.instruction`."""
        return self.preparer(rows)

    # ---------------------------------------------------------------- embedding
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        device = next(self.backbone.parameters()).device
        batch = {
            key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()
        }
        outputs = self._base().model(**batch, use_cache=False, return_dict=True)
        eos_id = self.processor.tokenizer.eos_token_id
        pooled = pool(
            outputs.last_hidden_state,
            batch["attention_mask"],
            self.config.pooling,
            batch["input_ids"],
            eos_id,
        ).float()
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    @torch.inference_mode()
    def encode(self, inputs: Sequence[Any], batch_size: int = 8, progress: bool = False) -> Tensor:
        """Embeddings `[N, D]` float32 on CPU for rows with `.text`, `.image`, `.instruction`."""
        was_training = self.training
        self.eval()
        outputs = []
        starts = range(0, len(inputs), batch_size)
        for start in tqdm(starts, desc="vlm2vec encode", disable=not progress):
            outputs.append(self(self.prepare(inputs[start : start + batch_size])).cpu())
        self.train(was_training)
        if not outputs:
            return torch.empty(0, 0)
        return torch.cat(outputs)

    def encode_image(self, images: list[Image.Image], normalize: bool = True) -> Tensor:
        rows = [EmbedInput(text=None, image=image, instruction=None) for image in images]
        return self._maybe_normalize(self.encode(rows), normalize)

    def encode_text(self, texts: list[str], normalize: bool = True) -> Tensor:
        rows = [EmbedInput(text=text, image=None, instruction=None) for text in texts]
        return self._maybe_normalize(self.encode(rows), normalize)

    @staticmethod
    def _maybe_normalize(embeddings: Tensor, normalize: bool) -> Tensor:
        return F.normalize(embeddings, dim=-1) if normalize else embeddings
