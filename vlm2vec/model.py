"""A VLM turned into an embedding model: prompt per family, last-token pooling, L2 normalisation, LoRA/DoRA."""

from __future__ import annotations

import json
import logging
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
from vlm2vec.adapters import VLMFamily, family_for, get_family
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


def _load_processor(name_or_path: str, family: VLMFamily, padding_side: str | None, trust_remote_code: bool):
    kwargs = {"trust_remote_code": True} if family.trust_remote_code and trust_remote_code else {}
    processor = transformers.AutoProcessor.from_pretrained(name_or_path, **kwargs)
    processor.tokenizer.padding_side = padding_side or family.padding_side
    return processor


def detect_family(name_or_path: str, trust_remote_code: bool = False) -> VLMFamily:
    config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return family_for(config.model_type)


def _is_training_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == TRAIN_FORMAT


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
    ) -> VLM2VecModel:
        """A base VLM (hub id or local dir) as an untrained embedding model: the zero-shot baseline."""
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        adapter = get_family(family) if family else detect_family(name_or_path, trust_remote_code)
        config = VLM2VecConfig(
            base_model=str(name_or_path),
            family=adapter.name,
            pooling=pooling,
            normalize=normalize,
            temperature=temperature,
            max_text_tokens=max_text_tokens,
            padding_side=padding_side,
        )
        backbone = _load_backbone(name_or_path, adapter, DTYPES[dtype], trust_remote_code)
        processor = _load_processor(name_or_path, adapter, padding_side, trust_remote_code)
        return cls(backbone.to(device), processor, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        trainable: bool = False,
        device: str | torch.device = "cpu",
    ) -> VLM2VecModel:
        """Load what `save_pretrained` wrote (LoRA adapter over its base, or full weights); a directory without
        `vlm2vec_config.json` is loaded as a base VLM with default settings."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() and (path / "final" / CONFIG_NAME).is_file():
            path = path / "final"  # a training run directory: its exported model
        if _is_training_checkpoint(path):
            return cls._from_training_checkpoint(path, dtype, trust_remote_code, device)
        if not (path / CONFIG_NAME).is_file():
            return cls.from_backbone(
                str(path), dtype=dtype, trust_remote_code=trust_remote_code, device=device
            )
        config = VLM2VecConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
        adapter = get_family(config.family)
        if config.lora is not None and not config.merged:
            from peft import PeftModel

            base = _load_backbone(config.base_model, adapter, DTYPES[dtype], trust_remote_code)
            backbone = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
        else:
            backbone = _load_backbone(str(path), adapter, DTYPES[dtype], trust_remote_code)
        processor = _load_processor(str(path), adapter, config.padding_side, trust_remote_code)
        return cls(backbone.to(device), processor, config)

    @classmethod
    def _from_training_checkpoint(
        cls, path: Path, dtype: str, trust_remote_code: bool, device: str | torch.device
    ) -> VLM2VecModel:
        """A `checkpoints/step_N` directory of `vlm2vec.train`: its base model plus the trained weights."""
        from core.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        config = VLM2VecConfig.from_dict(checkpoint.config["model"])
        model = cls.from_backbone(
            config.base_model,
            family=config.family,
            pooling=config.pooling,
            normalize=config.normalize,
            temperature=config.temperature,
            max_text_tokens=config.max_text_tokens,
            padding_side=config.padding_side,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
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
        return InputPreparer(self.family, self.processor, self.config.pooling, self.config.max_text_tokens)

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
