"""Convert a released SAIL checkpoint into an align head: ``python -m align.convert sail CHECKPOINT.pt ...``.

SAIL (Zhang et al., 2025; github.com/lezhang7/SAIL) saves its alignment layer with ``torch.save``: a bare state
dict, or a training checkpoint ``{"epoch", "name", "state_dict", "optimizer"[, "scaler"]}``; keys carry
``module.`` when trained under DDP and ``_orig_mod.`` when taken from a ``torch.compile``'d model. The file is
read with ``torch.load(weights_only=True)`` only: a file that needs arbitrary objects unpickled is refused.

The head kind, the star width factor, the mlp / ShareLock hidden width and every dim follow from the tensor
shapes (:data:`SAIL_LAYOUTS` maps each SAIL key to ours); a state dict that fits no kind is refused, naming the
keys that did not fit and the ones missing. The output folder holds ``head.safetensors`` + ``config.json`` in
the format ``align.train`` writes (``format: "align-head"``, ``head``, ``image_backbone``, ``text_backbone``),
plus ``converted_from`` (file, sha256, key layout), so :meth:`align.AlignedModel.from_pretrained` and every
``python -m evaluate`` task load it.

Math: SAIL's and our heads compute the same function (``LayerNorm -> mapping -> L2 normalise``, the logit scale
kept as a log), with one exception: SAIL's star mapping clamps ``f1 x`` and ``f2 x`` to ``[-1000, 1000]``. The
clamp of ``f1 x`` never changes ``ReLU6(f1 x)``; the clamp of ``f2 x`` is inactive for *every* input when the
bound :func:`star_f2_bound` (computed from the weights) is at most 1000, which is recorded in ``converted_from``
and warned about otherwise. See docs/align.md, "Released SAIL checkpoints".
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import pickle
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align.heads import MAX_LOGIT_SCALE, SHARELOCK_LAYERS, AlignmentHead, HeadConfig
from align.model import AlignedModel
from align.train import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

log = logging.getLogger("align.convert")

SAIL_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
SAIL_CLAMP = 1e3  # SAIL's StarMLP clamps f1(x) and f2(x) to [-1e3, 1e3]
SAIL_KINDS = ("linear", "mlp", "star", "sharelock")
_MODALITIES = (("vision", "image"), ("text", "text"))  # (SAIL's name, ours)
_LIST_LIMIT = 12
_CHUNK_ROWS = 4096


class ConvertError(ValueError):
    """The checkpoint cannot be converted as given; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class KeySpec:
    """One SAIL tensor: its key, the key of our head it becomes, and its shape in named dims.

    ``shape`` names each axis (``"d_image"``, ``"target"``, ...); every axis of one name must have one size
    across the state dict. ``scalar`` keys (the logit scale and bias) may be stored as ``[1]`` or ``[]``.
    """

    sail: str
    ours: str
    shape: tuple[str, ...] = ()
    scalar: bool = False
    optional: bool = False


def _linear(sail: str, ours: str, rows: str, cols: str) -> list[KeySpec]:
    return [
        KeySpec(f"{sail}.weight", f"{ours}.weight", (rows, cols)),
        KeySpec(f"{sail}.bias", f"{ours}.bias", (rows,)),
    ]


def _norm(sail_modality: str, modality: str) -> list[KeySpec]:
    dim = f"d_{modality}"
    return [
        KeySpec(f"{sail_modality}_layer_norm.weight", f"{modality}.norm.weight", (dim,)),
        KeySpec(f"{sail_modality}_layer_norm.bias", f"{modality}.norm.bias", (dim,)),
    ]


def _mapping(kind: str, sail_modality: str, modality: str) -> list[KeySpec]:
    """SAIL's ``{vision,text}_mapping_network.*`` of one kind -> our ``{image,text}.mapping.*``."""
    src, dst, dim, hidden = (
        f"{sail_modality}_mapping_network",
        f"{modality}.mapping",
        f"d_{modality}",
        f"h_{modality}",
    )
    if kind == "linear":  # nn.Linear(d, target)
        return _linear(src, dst, "target", dim)
    if kind == "mlp":  # SiglipMLP.proj = Linear(d, h), GELU, Linear(h, target)
        return _linear(f"{src}.proj.0", f"{dst}.0", hidden, dim) + _linear(
            f"{src}.proj.2", f"{dst}.2", "target", hidden
        )
    # StarMLP: f1, f2 = Linear(d, w*d); g = Linear(w*d, target) is our ``out``
    return (
        _linear(f"{src}.f1", f"{dst}.f1", hidden, dim)
        + _linear(f"{src}.f2", f"{dst}.f2", hidden, dim)
        + _linear(f"{src}.g", f"{dst}.out", "target", hidden)
    )


def _sharelock_mapping() -> list[KeySpec]:
    """ShareLockMLP.layers: (Linear, BatchNorm1d, ReLU, Dropout) x 3, then Linear; same indices in ours."""
    specs: list[KeySpec] = []
    src, dst, rows = "text_mapping_network.layers", "text.mapping", "d_text"
    for block in range(SHARELOCK_LAYERS - 1):
        linear, norm = 4 * block, 4 * block + 1
        specs += _linear(f"{src}.{linear}", f"{dst}.{linear}", "hidden", rows)
        specs += [
            KeySpec(f"{src}.{norm}.{p}", f"{dst}.{norm}.{p}", ("hidden",))
            for p in ("weight", "bias", "running_mean", "running_var")
        ]
        specs.append(
            KeySpec(f"{src}.{norm}.num_batches_tracked", f"{dst}.{norm}.num_batches_tracked", optional=True)
        )
        rows = "hidden"
    last = 4 * (SHARELOCK_LAYERS - 1)
    return specs + _linear(f"{src}.{last}", f"{dst}.{last}", "target", "hidden")


def _layout(kind: str) -> tuple[KeySpec, ...]:
    logits = [
        KeySpec("logit_scale", "log_logit_scale", scalar=True),  # both store the log of the scale
        KeySpec("logit_bias", "logit_bias", scalar=True),
    ]
    if kind == "sharelock":  # image features pass through: no vision norm or mapping
        return (*_norm("text", "text"), *_sharelock_mapping(), *logits)
    specs: list[KeySpec] = []
    for sail_modality, modality in _MODALITIES:
        specs += _norm(sail_modality, modality) + _mapping(kind, sail_modality, modality)
    return (*specs, *logits)


SAIL_LAYOUTS: dict[str, tuple[KeySpec, ...]] = {kind: _layout(kind) for kind in SAIL_KINDS}
"""Per head kind, every tensor of SAIL's alignment layer and the key of our :class:`AlignmentHead` it becomes."""


# ----- reading ------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f" ... and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else "")


def load_sail_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside a SAIL ``.pt`` file and a description of its container (kind, epoch, name)."""
    if not path.is_file():
        raise ConvertError(
            f"{path}: no such file; pass the .pt file SAIL's training wrote (e.g. epoch_100.pt)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.findall(r"Unsupported global: GLOBAL (\S+)", text)
        if not found:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            reason = detail.group(1).strip() if detail else text.splitlines()[0]
            raise ConvertError(
                f"{path} is not a torch.save file or is damaged ({reason}); pass the .pt file SAIL's training saved"
            ) from err
        raise ConvertError(
            f"{path} holds objects that only arbitrary unpickling can rebuild ({', '.join(found)}); "
            "align.convert reads checkpoints with torch.load(weights_only=True) only, because unpickling can run "
            "any code. If you trust the file, save its state dict alone in a Python session and convert that "
            f"file: torch.save(torch.load({str(path)!r}, weights_only=False)['state_dict'], 'head_only.pt')"
        ) from err
    except Exception as err:  # torch raises many types for a file that is not a torch.save archive
        raise ConvertError(
            f"{path} is not a torch.save file or is damaged ({type(err).__name__}: {err}); pass the .pt file "
            "SAIL's training saved"
        ) from err
    if not isinstance(loaded, dict):
        raise ConvertError(
            f"{path} holds a {type(loaded).__name__}, expected a state dict or a training checkpoint "
            "(a dict with 'state_dict')"
        )
    container: dict[str, Any] = {"top_level_keys": sorted(map(str, loaded))}
    if isinstance(loaded.get("state_dict"), dict):
        state = loaded["state_dict"]
        container["container"] = "training checkpoint (state_dict)"
        for name in ("epoch", "name"):
            if isinstance(loaded.get(name), int | str):
                container[name] = loaded[name]
    else:
        state = loaded
        container["container"] = "state dict"
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ConvertError(
            f"{path} is neither a state dict nor a training checkpoint with a 'state_dict' entry: "
            f"{_listing(not_tensors)} are not tensors (top-level keys: {_listing(container['top_level_keys'])})"
        )
    return {str(k): v for k, v in state.items()}, container


def strip_prefixes(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Keys without their leading ``module.`` / ``_orig_mod.`` wrappers (any order, any number), and which were
    found."""
    out: dict[str, Tensor] = {}
    found: list[str] = []
    for key, value in state.items():
        name = key
        while name.startswith(SAIL_PREFIXES):
            prefix = next(p for p in SAIL_PREFIXES if name.startswith(p))
            if prefix not in found:
                found.append(prefix)
            name = name[len(prefix) :]
        if name in out:
            raise ConvertError(
                f"keys {key!r} and another one both become {name!r} once the module./_orig_mod. prefixes are "
                "removed; the file mixes two copies of the head"
            )
        out[name] = value
    return out, found


# ----- layout and shapes ----------------------------------------------------------------------------------------
def match_layout(keys: set[str]) -> str:
    """The head kind whose SAIL layout has exactly these keys; otherwise a :class:`ConvertError` naming the keys
    of the closest layout that did not fit and the ones it lacks."""
    scored = []
    for kind, specs in SAIL_LAYOUTS.items():
        expected = {s.sail for s in specs}
        missing = sorted({s.sail for s in specs if not s.optional} - keys)
        unmatched = sorted(keys - expected)
        if not missing and not unmatched:
            return kind
        scored.append((len(missing) + len(unmatched), kind, missing, unmatched))
    _, kind, missing, unmatched = min(scored)
    known = {s.sail for specs in SAIL_LAYOUTS.values() for s in specs}
    foreign = sorted(keys - known)
    parts = [f"the state dict fits none of SAIL's head layouts ({', '.join(SAIL_KINDS)})."]
    if foreign:
        parts.append(f"Keys that belong to no layout: {_listing(foreign)}.")
    parts.append(
        f"Closest is {kind!r}; keys that do not fit it: {_listing(unmatched) or 'none'}; "
        f"keys it lacks: {_listing(missing) or 'none'}."
    )
    parts.append(
        "Only SAIL's AlignmentLayer (linear, mlp, star) and ShareLockAlignmentLayer heads convert; "
        "pass the file SAIL's main.py saved."
    )
    raise ConvertError(" ".join(parts))


def check_shapes(kind: str, state: dict[str, Tensor]) -> dict[str, int]:
    """The size of every named dim of ``kind``'s layout, checked for consistency across all keys."""
    dims: dict[str, int] = {}
    for spec in SAIL_LAYOUTS[kind]:
        if spec.optional or spec.sail not in state:  # an optional buffer (num_batches_tracked) is not checked
            continue
        tensor = state[spec.sail]
        if not torch.is_floating_point(tensor):
            raise ConvertError(f"{spec.sail} holds {tensor.dtype} values, expected floating point weights")
        if spec.scalar:
            if tensor.numel() != 1 or tensor.ndim > 1:
                raise ConvertError(
                    f"{spec.sail} has shape {list(tensor.shape)}, expected [1] or [] (one value)"
                )
            continue
        if tensor.ndim != len(spec.shape):
            raise ConvertError(
                f"{spec.sail} has shape {list(tensor.shape)}, expected {len(spec.shape)} dims ({', '.join(spec.shape)})"
            )
        for axis, (name, size) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
            if dims.setdefault(name, int(size)) != size:
                raise ConvertError(
                    f"{spec.sail} has size {size} on axis {axis} ({name}), but other tensors of the head give "
                    f"{name} = {dims[name]}: the tensors do not form one {kind} head"
                )
    bad = sorted(k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all())
    if bad:
        raise ConvertError(f"non-finite values (NaN or inf) in {_listing(bad)}: the checkpoint is damaged")
    return dims


def head_config_from(kind: str, state: dict[str, Tensor]) -> HeadConfig:
    """Our :class:`HeadConfig` for a SAIL state dict of ``kind``: dims, width factor and hidden width from the
    shapes; the logit scale (``exp`` of SAIL's stored log, at most 100) and bias from their values."""
    dims = check_shapes(kind, state)
    extra: dict[str, Any] = {}
    if kind == "sharelock":
        image_dim = dims["target"]  # the text head maps into the unchanged image features
        extra["hidden_dim"] = dims["hidden"]
    else:
        image_dim = dims["d_image"]
    if kind == "star":
        widths = {}
        for modality in ("image", "text"):
            hidden, dim = dims[f"h_{modality}"], dims[f"d_{modality}"]
            if hidden % dim:
                raise ConvertError(
                    f"the {modality} star mapping is {hidden} wide for a {dim}-d input: not a whole width factor "
                    "(SAIL's StarMLP is width_factor x input dim)"
                )
            widths[modality] = hidden // dim
        if widths["image"] != widths["text"]:
            raise ConvertError(
                f"the star mappings have width factors {widths['image']} (image) and {widths['text']} (text); "
                "our star head has one width factor for both modalities, as SAIL's AlignmentLayer does"
            )
        extra["width_factor"] = widths["image"]
    if kind == "mlp":
        mlp_widths = {m: dims[f"h_{m}"] for m in ("image", "text")}
        if mlp_widths["image"] == 4 * dims["d_image"] and mlp_widths["text"] == 4 * dims["d_text"]:
            extra["hidden_dim"] = None  # our default, as SAIL's: 4 x input dim per modality
        elif mlp_widths["image"] == mlp_widths["text"]:
            extra["hidden_dim"] = mlp_widths["image"]
        else:
            raise ConvertError(
                f"the mlp mappings are {mlp_widths['image']} (image) and {mlp_widths['text']} (text) wide; our mlp head "
                "has either 4 x input dim per modality or one hidden width for both"
            )
    scale = math.exp(float(state["logit_scale"].reshape(())))
    if scale > MAX_LOGIT_SCALE * (1 + 1e-5):
        log.warning(
            "logit scale %.6g is above %g: kept in the weights, but our trainer would clamp it to %g",
            scale,
            MAX_LOGIT_SCALE,
            MAX_LOGIT_SCALE,
        )
    try:
        return HeadConfig(
            head=kind,
            image_dim=image_dim,
            text_dim=dims["d_text"],
            target_dim=dims["target"],
            logit_scale=min(scale, MAX_LOGIT_SCALE),
            logit_bias=float(state["logit_bias"].reshape(())),
            **extra,
        )
    except ValueError as err:
        raise ConvertError(f"the tensors give an invalid {kind} head: {err}") from err


def star_f2_bound(norm_weight: Tensor, norm_bias: Tensor, f2_weight: Tensor, f2_bias: Tensor) -> float:
    """An upper bound of ``|f2(LayerNorm(x))|`` over every input ``x`` (and every output unit).

    ``LayerNorm(x) = g * n + b`` with ``sum(n) = 0`` and ``|n|^2 < d``, so unit ``i`` is
    ``v_i . n + W_i . b + c_i`` with ``v_i = W_i * g``; as ``n`` sums to zero, ``v_i . n = (v_i - mean v_i) . n``
    and Cauchy-Schwarz gives ``|f2_i| < sqrt(d) |v_i - mean v_i| + |W_i . b + c_i|``. When this is at most 1000,
    SAIL's clamp of ``f2 x`` to ``[-1000, 1000]`` never acts and the converted head is exact for every input.
    """
    dim = norm_weight.numel()
    gain, shift = norm_weight.double(), norm_bias.double()
    worst = 0.0
    for start in range(0, f2_weight.shape[0], _CHUNK_ROWS):
        rows = f2_weight[start : start + _CHUNK_ROWS].double()
        spread = rows * gain
        spread -= spread.mean(dim=1, keepdim=True)
        offset = rows @ shift + f2_bias[start : start + _CHUNK_ROWS].double()
        worst = max(worst, float((math.sqrt(dim) * spread.norm(dim=1) + offset.abs()).max()))
    return worst


def star_clamp_report(state: dict[str, Tensor]) -> dict[str, dict[str, float | bool]]:
    report: dict[str, dict[str, float | bool]] = {}
    for sail_modality, modality in _MODALITIES:
        bound = star_f2_bound(
            state[f"{sail_modality}_layer_norm.weight"],
            state[f"{sail_modality}_layer_norm.bias"],
            state[f"{sail_modality}_mapping_network.f2.weight"],
            state[f"{sail_modality}_mapping_network.f2.bias"],
        )
        report[modality] = {"f2_bound": bound, "clamp_never_acts": bound <= SAIL_CLAMP}
        if bound > SAIL_CLAMP:
            log.warning(
                "%s star head: |f2 x| may reach %.4g > %g, where SAIL clamps it and this head does not; the "
                "embeddings match SAIL's except for inputs that drive f2 x past the clamp",
                modality,
                bound,
                SAIL_CLAMP,
            )
    return report


def convert_state(kind: str, state: dict[str, Tensor], head: AlignmentHead) -> dict[str, Tensor]:
    """SAIL tensors under our keys, as float32 (scalars reshaped to ``[]``), ready for ``head.load_state_dict``."""
    ours = head.state_dict()
    out: dict[str, Tensor] = {}
    for spec in SAIL_LAYOUTS[kind]:
        if spec.sail not in state:  # an optional buffer (BatchNorm's num_batches_tracked)
            out[spec.ours] = ours[spec.ours].clone()
            continue
        tensor = state[spec.sail]
        out[spec.ours] = tensor.reshape(()) if spec.scalar else tensor
        out[spec.ours] = out[spec.ours].to(ours[spec.ours].dtype)
    return out


# ----- backbones ------------------------------------------------------------------------------------------------
@dataclass
class BackboneArgs:
    """What the command line says about one modality's frozen backbone."""

    model: str
    pooling: str | None = None
    instruction: str | None = None
    max_length: int | None = None


def backbone_record(modality: str, args: BackboneArgs, dim: int) -> dict[str, Any]:
    """The ``{image,text}_backbone`` entry of ``config.json`` without loading the backbone: the keys
    :func:`align.data.backbone_info` writes, with the known-model defaults (pooling, max_length) filled in and
    ``revision`` / ``normalized`` left unknown (None)."""
    from encode.backbones import KNOWN_IMAGE_MODELS, KNOWN_TEXT_MODELS

    known = (KNOWN_IMAGE_MODELS if modality == "image" else KNOWN_TEXT_MODELS).get(args.model)
    pooling = args.pooling or (known.pooling if known else None)
    if pooling is None:
        log.warning(
            "no --%s-pooling given and %s is not a known model: the backbone's default pooling will be used; "
            "pass the pooling SAIL's features were made with",
            modality,
            args.model,
        )
    info: dict[str, Any] = {
        "model": args.model,
        "revision": None,
        "pooling": pooling,
        "dim": dim,
        "normalized": None,
    }
    if modality == "text":
        info.update(
            instruction=args.instruction, max_length=args.max_length or (known.max_length if known else None)
        )
    return info


def checked_backbone_record(
    modality: str, args: BackboneArgs, dim: int, device: str, trust_remote_code: bool
) -> dict[str, Any]:
    """Load the backbone, check that its feature dim is the head's input dim, and describe it exactly as
    ``align.train`` does (:func:`align.data.backbone_info` of its store attrs)."""
    from align.data import backbone_info
    from encode.backbones import load_image_backbone, load_text_backbone
    from encode.store import StoreMeta

    if modality == "image":
        backbone = load_image_backbone(
            args.model, pooling=args.pooling, device=device, trust_remote_code=trust_remote_code
        )
    else:
        backbone = load_text_backbone(
            args.model,
            pooling=args.pooling,
            instruction=args.instruction,
            max_length=args.max_length,
            device=device,
            trust_remote_code=trust_remote_code,
        )
    meta = StoreMeta(**backbone.meta())
    if meta.dim != dim:
        raise ConvertError(
            f"the {modality} backbone {args.model} with pooling {meta.pooling!r} gives {meta.dim}-d features, but "
            f"the head takes {dim}-d {modality} features; pass the model and --{modality}-pooling the SAIL head "
            "was trained on"
        )
    return backbone_info(meta)


# ----- conversion ------------------------------------------------------------------------------------------------
@dataclass
class SailConversion:
    """Everything :func:`convert_sail` needs."""

    checkpoint: Path
    out: Path
    image: BackboneArgs
    text: BackboneArgs
    check_backbones: bool = False
    device: str = "cpu"
    trust_remote_code: bool = False
    overwrite: bool = False


def _write(model: AlignedModel, out: Path, overwrite: bool) -> None:
    """``head.safetensors`` + ``config.json`` into ``out``: written beside it first, then moved in file by file."""
    present = [name for name in ("head.safetensors", "config.json") if (out / name).exists()]
    if present and not overwrite:
        raise ConvertError(
            f"{out} already holds {', '.join(present)}; choose another --out or pass --overwrite"
        )
    if out.exists() and not out.is_dir():
        raise ConvertError(f"--out {out} is a file, not a folder")
    tmp = out.parent / f".{out.name}.converting"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("head.safetensors", "config.json"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_sail(job: SailConversion) -> AlignedModel:
    """Convert ``job.checkpoint`` and write it to ``job.out``; returns the model reloaded from ``job.out``."""
    raw, container = load_sail_file(job.checkpoint)
    state, prefixes = strip_prefixes(raw)
    kind = match_layout(set(state))
    hcfg = head_config_from(kind, state)
    clamp = star_clamp_report(state) if kind == "star" else None
    head = AlignmentHead(hcfg)
    head.load_state_dict(convert_state(kind, state, head), strict=True)
    if job.check_backbones:
        image = checked_backbone_record("image", job.image, hcfg.image_dim, job.device, job.trust_remote_code)
        text = checked_backbone_record("text", job.text, hcfg.text_dim, job.device, job.trust_remote_code)
    else:
        image = backbone_record("image", job.image, hcfg.image_dim)
        text = backbone_record("text", job.text, hcfg.text_dim)
    record: dict[str, Any] = {
        "source": "sail",
        "file": str(job.checkpoint.resolve()),
        "sha256": file_sha256(job.checkpoint),
        "bytes": job.checkpoint.stat().st_size,
        **container,
        "prefixes_stripped": prefixes,
        "layout": kind,
        "key_mapping": {s.sail: s.ours for s in SAIL_LAYOUTS[kind] if s.sail in state},
        "backbones_checked": job.check_backbones,
    }
    if clamp is not None:
        record["star_clamp"] = clamp
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "head": hcfg.to_dict(),
        "image_backbone": image,
        "text_backbone": text,
        "converted_from": record,
    }
    _write(AlignedModel(head, config), job.out, job.overwrite)
    reloaded = AlignedModel.from_pretrained(job.out)
    written = reloaded.head.state_dict()
    if any(not torch.equal(written[k], v) for k, v in head.state_dict().items()):
        raise ConvertError(f"{job.out}: the written weights do not read back equal; the disk may be failing")
    return reloaded


# ----- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m align.convert",
        description="Convert a released checkpoint of another codebase into an align head folder "
        "(head.safetensors + config.json) that AlignedModel.from_pretrained and python -m evaluate load.",
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = sub.add_parser(
        "sail",
        help="a SAIL alignment-layer checkpoint (torch.save .pt from github.com/lezhang7/SAIL)",
        description="Convert a SAIL alignment layer (linear, mlp, star or ShareLock; the kind, width and dims "
        "follow from the tensor shapes) and name the frozen backbones its features came from.",
    )
    p.add_argument(
        "checkpoint", type=Path, metavar="CHECKPOINT.pt", help="the .pt file SAIL's training saved"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder for head.safetensors + config.json",
    )
    p.add_argument(
        "--image-model",
        required=True,
        metavar="ID",
        help="image backbone the head was trained on (SAIL-L: facebook/dinov2-large), as python -m encode names it",
    )
    p.add_argument(
        "--image-pooling",
        default=None,
        metavar="P",
        help="image feature pooling (default: the known model's, e.g. concat = CLS | mean patch for DINOv2)",
    )
    p.add_argument(
        "--text-model",
        required=True,
        metavar="ID",
        help="text backbone the head was trained on (SAIL-L: nvidia/NV-Embed-v2)",
    )
    p.add_argument(
        "--text-pooling", default=None, metavar="P", help="text feature pooling (default: the known model's)"
    )
    p.add_argument(
        "--text-instruction",
        default=None,
        metavar="TEXT",
        help="instruction the captions were encoded with (SAIL encodes NV-Embed-v2 captions without one)",
    )
    p.add_argument(
        "--text-max-length",
        type=int,
        default=None,
        metavar="N",
        help="token limit of the text backbone (default: the known model's; SAIL used 1024 for NV-Embed-v2)",
    )
    p.add_argument(
        "--check-backbones",
        action="store_true",
        help="load both backbones, refuse one whose feature dim differs from the head's, and record their "
        "revision and settings exactly as align.train does (needs their weights)",
    )
    p.add_argument("--device", default="cpu", help="device for --check-backbones (default cpu)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="with --check-backbones: let backbones that ship hub code (NV-Embed-v2) run it",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace head.safetensors / config.json already in --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written; 2 the checkpoint or the settings were refused (the log says why)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.text_max_length is not None and args.text_max_length <= 0:
        log.error("--text-max-length must be positive, got %d", args.text_max_length)
        return 2
    job = SailConversion(
        checkpoint=args.checkpoint,
        out=args.out,
        image=BackboneArgs(args.image_model, args.image_pooling),
        text=BackboneArgs(args.text_model, args.text_pooling, args.text_instruction, args.text_max_length),
        check_backbones=args.check_backbones,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    try:
        model = convert_sail(job)
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    c = model.config["head"]
    sys.stdout.write(
        f"wrote {args.out}: SAIL {c['head']} head, image {c['image_dim']} -> {c['target_dim']}, text "
        f"{c['text_dim']} -> {c['target_dim']}, logit scale {model.logit_scale:.4g}, bias {model.logit_bias:.4g}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
