"""Export an align checkpoint for use outside this toolkit.

::

    python -m align.export sentence-transformers CHECKPOINT OUT [--overwrite] [--device cuda]

then ``SentenceTransformer(OUT, trust_remote_code=True).encode(texts)`` and ``.encode(pil_images)`` give the
align embeddings (``align.sentence_transformers_module`` describes the folder). ``OUT/align_export.json``
records what the export was made from. The export is written to a hidden folder beside ``OUT`` and moved in only
when complete; with ``--overwrite`` an existing ``OUT`` is removed only after that.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import sentence_transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Router

from align.factory import CheckpointError, resolve_checkpoint
from align.model import AlignedModel
from align.sentence_transformers_module import AlignedHead, AlignedImageBackbone, AlignedTextBackbone
from core.staging import staged_folder

log = logging.getLogger(__name__)

EXPORT_RECORD = "align_export.json"
PROMPT_NAME = "instruction"
BUILT_IN_TEXT_ROUTE = "sentence-transformers modules of the text backbone + AlignedHead"
OWN_TEXT_ROUTE = "AlignedTextBackbone + AlignedHead"


class ExportError(ValueError):
    """An output folder the export refuses to write (the message says why and what to do)."""


@dataclass
class SentenceTransformersExport:
    """What a sentence-transformers export was made from; saved as ``OUT/align_export.json``."""

    checkpoint: str
    head: dict
    image_backbone: dict
    text_backbone: dict
    text_route: str
    prompt: str | None
    sentence_transformers_version: str
    format: str = "sentence-transformers"
    load: str = "SentenceTransformer(OUT, trust_remote_code=True)"


def check_output(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``OUT`` that is a file, holds the checkpoint, or is not empty (unless
    ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT {out} is a file, not a folder; choose a folder path")
    resolved, source = out.resolve(), checkpoint.resolve()
    if resolved == source or resolved in source.parents:
        raise ExportError(f"OUT {out} holds the checkpoint {checkpoint}; choose a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"OUT {out} is not empty; choose another folder or pass --overwrite (the old folder is removed only "
            "after the new export is complete)"
        )


def build_sentence_transformer(model: AlignedModel) -> tuple[SentenceTransformer, SentenceTransformersExport]:
    """The ``[Router(text, image), Normalize]`` pipeline of an aligned model, and its export record."""
    image_info, text_info = model.config["image_backbone"], model.config["text_backbone"]
    image_route = [
        AlignedImageBackbone(image_info["model"], image_info.get("pooling"), model.trust_remote_code),
        AlignedHead.from_head(model.head, "image"),
    ]
    embedder = model.text_backbone.module
    pipeline = getattr(embedder, "model", None)
    if isinstance(pipeline, SentenceTransformer):  # the backbone's own modules, with its pooling and length
        text_route, route_name, prompt = [*pipeline], BUILT_IN_TEXT_ROUTE, getattr(embedder, "prompt", None)
    else:
        backbone = AlignedTextBackbone(
            text_info["model"],
            text_info.get("pooling"),
            text_info.get("instruction"),
            text_info.get("max_length"),
            model.trust_remote_code,
        )
        text_route, route_name, prompt = [backbone], OWN_TEXT_ROUTE, None
    routes = {"text": [*text_route, AlignedHead.from_head(model.head, "text")], "image": image_route}
    router = Router(routes, allow_empty_key=False)  # no default route: other inputs get a clear error
    st = SentenceTransformer(
        modules=[router, Normalize()],
        device=str(model.device),
        prompts={PROMPT_NAME: prompt} if prompt else None,
        default_prompt_name=PROMPT_NAME if prompt else None,
        similarity_fn_name="cosine",
    )
    record = SentenceTransformersExport(
        checkpoint="",
        head=model.config["head"],
        image_backbone=image_info,
        text_backbone=text_info,
        text_route=route_name,
        prompt=prompt,
        sentence_transformers_version=sentence_transformers.__version__,
    )
    return st, record


def export_sentence_transformers(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Path:
    """Write the sentence-transformers folder of an align checkpoint (or a training run's newest) to ``out``."""
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    check_output(out, source, overwrite)
    model = AlignedModel.from_pretrained(source, device=device, trust_remote_code=trust_remote_code)
    st, record = build_sentence_transformer(model)
    record.checkpoint = str(source.resolve())
    with staged_folder(out) as staging:
        st.save(str(staging))
        (staging / EXPORT_RECORD).write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m align.export",
        description="Export an align checkpoint (head.safetensors + config.json, or a training run folder: its "
        "newest checkpoints/step_N) in a format other libraries load.",
    )
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = sub.add_parser(
        "sentence-transformers",
        help="a SentenceTransformer folder whose encode() embeds texts and PIL images",
        description="Write a SentenceTransformer folder: a Router sends texts through the text backbone and PIL "
        "images through the image backbone, each followed by its half of the head, then Normalize. Load it with "
        "SentenceTransformer(OUT, trust_remote_code=True) from a Python that can import this repository.",
    )
    p.add_argument(
        "checkpoint", type=Path, metavar="CHECKPOINT", help="align checkpoint or training run folder"
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (must be empty or new)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT (removed only after the new export is complete)",
    )
    p.add_argument(
        "--device", default="cpu", help="device the backbones load on while exporting (default cpu)"
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let backbones that ship hub code (NV-Embed-v2) run it while exporting; loading the export passes "
        "its own trust_remote_code (required there) on to them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written; 2 the checkpoint or the output folder was refused (the message says why)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        out = export_sentence_transformers(
            args.checkpoint,
            args.out,
            overwrite=args.overwrite,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    except (CheckpointError, ExportError) as err:
        log.error("%s", err)
        return 2
    sys.stdout.write(f"wrote {out}; load it with SentenceTransformer({str(out)!r}, trust_remote_code=True)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
