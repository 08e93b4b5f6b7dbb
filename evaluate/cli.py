"""``python -m evaluate TASK --model MODEL --data DIR``: validate the data, load the model, score, write JSON."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from core.cpu_memory import retain_freed_memory
from core.distributed import init_distributed, leave_process_group
from core.metrics import KNN_KS, KNN_TEMPERATURE, TIES
from core.protocol import CapabilityError, EmbeddingModel, InterleavedModel, check_capabilities
from evaluate import datasets as D
from evaluate import mmeb_v2, tasks
from evaluate.cache import FeatureCache, default_cache_dir, model_config, model_fingerprint
from evaluate.datasets import (
    ImageFolderData,
    LayoutError,
    load_imagefolder,
    load_knn_splits,
    load_mmeb,
    load_mmvp,
    load_retrieval,
    load_winoground,
)
from evaluate.gallery import GalleryConfig, check_gallery_path, retrieval_gallery
from evaluate.index import add_index_parser, run_index
from evaluate.models import ModelSpecError, load_model
from evaluate.references import MMEB_BY_NAME, MMEB_DATASETS
from evaluate.results import EvalResult, metrics_table, report_table

logger = logging.getLogger("evaluate")

TASKS = ("zeroshot", "retrieval", "winoground", "mmvp", "mmeb", "knn")

Runner = Callable[[EmbeddingModel, tasks.EncodeSettings], tasks.TaskResult]
"""Scores a loaded model on the data :func:`prepare` read."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="open_clip:ARCH/PRETRAINED (tag or checkpoint file), or a checkpoint directory "
        "(an align/ run or step_N dir, or a vlm2vec/ checkpoint)",
    )
    parser.add_argument(
        "--data", required=True, help="dataset path in the task's layout (see the task's --help)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="result JSON (default: eval_results/TASK_DATASET_FINGERPRINT.json)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers reading images (default 0)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let checkpoint loaders run hub code their backbone ships (vlm2vec); off by default",
    )
    parser.add_argument(
        "--name", default=None, help="dataset name in results and reports (default: inferred)"
    )
    _vlm2vec_options(parser)
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache directory (default: $EVALUATE_CACHE_DIR or ~/.cache/multimodal-toolkit/evaluate)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="always encode; read and write no cached features"
    )


def _vlm2vec_options(parser: argparse.ArgumentParser) -> None:
    """--model settings of VLM2Vec folders (docs/vlm2vec.md, "Released VLM2Vec models", lists each release's)."""
    group = parser.add_argument_group(
        "VLM2Vec models (--model a vlm2vec/ run or export, a released PEFT adapter or full-weight folder)"
    )
    group.add_argument(
        "--base-model",
        default=None,
        help="base VLM of a PEFT adapter folder (hub id or local dir), instead of adapter_config.json's "
        "base_model_name_or_path",
    )
    group.add_argument(
        "--prompt-format",
        choices=("reference", "ours"),
        default=None,
        help="prompt layout (default: the one recorded in our folders' config, reference for folders we did "
        "not write)",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize every image to this square first (0: no resize; default: the folder's, i.e. 1344 for "
        "LLaVA-Next in the reference format)",
    )
    group.add_argument("--num-crops", type=int, default=None, help="Phi-3.5-V processor crops")
    group.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="Qwen2-VL / Qwen2.5-VL processor: fewest pixels per image",
    )
    group.add_argument(
        "--max-pixels", type=int, default=None, help="Qwen2-VL / Qwen2.5-VL processor: most pixels per image"
    )


def _model_options(args: argparse.Namespace) -> dict:
    """The VLM2Vec settings given on the command line (None: the folder's own)."""
    names = ("base_model", "prompt_format", "image_size", "num_crops", "min_pixels", "max_pixels")
    return {name: getattr(args, name, None) for name in names}


def _ties(parser: argparse.ArgumentParser, task: str, reference: str) -> None:
    parser.add_argument(
        "--ties",
        choices=TIES,
        default=tasks.DEFAULT_TIES[task],
        help="score of a positive tied with a negative at the cut-off: the positive wins (optimistic), loses "
        "(pessimistic) or gets the expected credit of a random tie-break (expected); default "
        f"{tasks.DEFAULT_TIES[task]}, as {reference} (docs/evaluate.md, Ties)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate",
        description="Score an embedding model on zero-shot classification, retrieval, Winoground, MMVP-VLM, MMEB "
        "or a kNN probe, or join result files into one table (report).",
    )
    sub = parser.add_subparsers(dest="task", required=True)

    p = sub.add_parser(
        "zeroshot",
        help="zero-shot classification on an ImageFolder (ImageNet-1k val by default)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Layout:\n" + D.IMAGEFOLDER_LAYOUT,
    )
    _common(p)
    p.add_argument("--split", default="val", help="subfolder of --data holding the class folders, if present")
    p.add_argument(
        "--classes",
        type=Path,
        default=None,
        help="class folder names in class-index order, one per line (default: wnids.txt beside the "
        "data, else the sorted folder names)",
    )
    p.add_argument(
        "--classnames",
        type=Path,
        default=None,
        help="readable class names, one per line, aligned with --classes (default: open_clip's "
        "IMAGENET_CLASSNAMES for the 1000 ImageNet classes, else the folder names)",
    )
    p.add_argument(
        "--templates",
        type=Path,
        default=None,
        help="prompt templates with '{}', one per line (default: open_clip's 80 OPENAI_IMAGENET_TEMPLATES)",
    )
    _ties(p, "zeroshot", "CLIP_benchmark's torch.topk order")

    p = sub.add_parser(
        "retrieval",
        help="image<->text retrieval R@1/5/10 (COCO captions JSON or Karpathy JSON)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Layout:\n" + D.RETRIEVAL_LAYOUT,
    )
    _common(p)
    p.add_argument("--image-root", type=Path, default=None, help="image directory (see layout)")
    p.add_argument(
        "--split", default=None, help="COCO: val2017 (default) / Karpathy: test (default), val, train"
    )
    _ties(p, "retrieval", "CLIP_benchmark's torch.topk order")
    p.add_argument(
        "--gallery",
        type=Path,
        default=None,
        help="also write a static HTML page of text queries with their top-k images, hits marked (thumbnails "
        "embedded; see docs/evaluate.md, Gallery)",
    )
    p.add_argument(
        "--gallery-queries", type=int, default=24, help="text queries on the gallery page (default 24)"
    )
    p.add_argument("--gallery-k", type=int, default=5, help="images shown per gallery query (default 5)")

    for name, layout, text in (
        ("winoground", "WINOGROUND_LAYOUT", "Winoground text/image/group scores"),
        ("mmvp", "MMVP_LAYOUT", "MMVP-VLM pair accuracy per category and average"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description="Layout:\n" + getattr(D, layout),
        )
        _common(p)

    p = sub.add_parser(
        "mmeb",
        help="MMEB Precision@1 per dataset, meta-task, IND/OOD and overall",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Layout:\n" + D.MMEB_LAYOUT,
    )
    _common(p)
    p.add_argument("--image-root", type=Path, default=None, help="MMEB images (default DATA/eval_images)")
    p.add_argument(
        "--subsets",
        nargs="+",
        default=None,
        help="MMEB datasets to score (default: every one of the 36 present under --data)",
    )
    _ties(p, "mmeb", "VLM2Vec's argmax with the positive first")
    mmeb_v2.add_arguments(p)

    p = sub.add_parser(
        "knn",
        help="DINO weighted kNN probe on train/ and val/ ImageFolders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Layout:\n" + D.KNN_LAYOUT,
    )
    _common(p)
    p.add_argument(
        "--k", type=int, nargs="+", default=list(KNN_KS), help="neighbour counts (default 10 20 100 200)"
    )
    p.add_argument(
        "--temperature", type=float, default=KNN_TEMPERATURE, help="vote temperature (default 0.07)"
    )
    _ties(p, "knn", "DINO's torch.sort order")

    add_index_parser(sub)

    p = sub.add_parser("report", help="join result JSONs into one markdown table")
    p.add_argument("results", nargs="+", type=Path, help="result JSON files written by the tasks")
    p.add_argument(
        "--references",
        action="store_true",
        help="add the published SAIL, CLIP and VLM2Vec numbers for the same columns",
    )
    p.add_argument("--output", type=Path, default=None, help="also write the table to this markdown file")
    return parser


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise LayoutError(f"{path} not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _zeroshot_inputs(
    args: argparse.Namespace,
) -> tuple[ImageFolderData, list[str], list[tasks.Template], str]:
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    data = load_imagefolder(args.data, args.classes, split=args.split)
    if args.classnames is not None:
        classnames = _read_lines(args.classnames)
    elif len(data.classes) == len(IMAGENET_CLASSNAMES) and all(c.startswith("n") for c in data.classes):
        classnames = list(IMAGENET_CLASSNAMES)
    else:
        classnames = [c.replace("_", " ") for c in data.classes]
    if len(classnames) != len(data.classes):
        raise LayoutError(
            f"{len(classnames)} class names for {len(data.classes)} classes; give one name per class"
        )
    templates = _read_lines(args.templates) if args.templates else list(OPENAI_IMAGENET_TEMPLATES)
    bad = [t for t in templates if isinstance(t, str) and "{}" not in t]
    if bad:
        raise LayoutError(f"templates must contain '{{}}' for the class name: {bad[:3]}")
    # "imagenet" (the name reference numbers use) only for the full protocol: every class has images
    full_imagenet = classnames == list(IMAGENET_CLASSNAMES) and data.classes_with_images == len(classnames)
    name = args.name or ("imagenet" if full_imagenet else Path(args.data).name)
    return data, classnames, templates, name


def _mmeb_subsets(args: argparse.Namespace) -> list[str]:
    data = Path(args.data)
    if args.subsets:
        unknown = [s for s in args.subsets if s not in MMEB_BY_NAME]
        if unknown:
            raise LayoutError(f"unknown MMEB datasets {unknown}; known: {[d.name for d in MMEB_DATASETS]}")
        return list(args.subsets)
    present = [d.name for d in MMEB_DATASETS if (data / d.name).is_dir()]
    if not present:
        raise LayoutError(
            f"no MMEB dataset folders under {data}; expected some of {[d.name for d in MMEB_DATASETS]}"
        )
    absent = [d.name for d in MMEB_DATASETS if d.name not in present]
    if absent:
        logger.warning("scoring %d of 36 MMEB datasets; absent: %s", len(present), ", ".join(absent))
    return present


def prepare(args: argparse.Namespace) -> tuple[Runner, dict, tuple[str, ...]]:
    """Read and validate the data (raises before any model is loaded). Returns (runner, dataset info, the
    methods the task needs)."""
    needs = ("encode_image", "encode_text")
    if args.task == "zeroshot":
        data, classnames, templates, name = _zeroshot_inputs(args)
        return (
            lambda m, enc: tasks.zeroshot(m, data, classnames, templates, enc, args.ties),
            {"name": name, "path": str(args.data), "root": str(data.root)},
            ("encode_image", "encode_text"),
        )
    if args.task == "retrieval":
        check_gallery_path(args.gallery)
        gallery = GalleryConfig(args.gallery_queries, args.gallery_k)
        data = load_retrieval(args.data, args.image_root, args.split)

        def retrieval(m: EmbeddingModel, enc: tasks.EncodeSettings) -> tasks.TaskResult:
            outcome = tasks.retrieval(m, data, enc, ties=args.ties)
            if args.gallery is not None:
                title = f"{args.name or data.name}: {args.model}"
                retrieval_gallery(m, data, enc, args.gallery, gallery, title)
            return outcome

        return (
            retrieval,
            {"name": args.name or data.name, "path": str(args.data), "split": data.split},
            needs,
        )
    if args.task == "winoground":
        data = load_winoground(args.data)
        return (
            lambda m, enc: tasks.winoground(m, data, enc),
            {"name": args.name or "winoground", "path": str(args.data)},
            needs,
        )
    if args.task == "mmvp":
        data = load_mmvp(args.data)
        return (
            lambda m, enc: tasks.mmvp(m, data, enc),
            {"name": args.name or "mmvp", "path": str(args.data)},
            needs,
        )
    if args.task == "mmeb" and args.version == 2:
        return mmeb_v2.prepare(args)
    if args.task == "mmeb":
        subsets = load_mmeb(args.data, _mmeb_subsets(args), args.image_root)
        return (
            lambda m, enc: tasks.mmeb(m, subsets, enc, args.ties),
            {"name": args.name or "mmeb", "path": str(args.data), "subsets": [s.name for s in subsets]},
            (),
        )
    if args.task == "knn":
        train, val = load_knn_splits(args.data)
        return (
            lambda m, enc: tasks.knn(m, train, val, enc, args.k, args.temperature, args.ties),
            {"name": args.name or Path(args.data).name, "path": str(args.data)},
            ("encode_image",),
        )
    raise ValueError(f"unknown task {args.task!r}")


def resolve_device(device: str) -> torch.device:
    """``--device`` as a torch device; under torchrun a bare ``cuda`` is this process's GPU (``LOCAL_RANK``)."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if resolved.type == "cuda" and resolved.index is not None:
        torch.cuda.set_device(resolved)
    return resolved


def _summed_over_ranks(values: list[int], world: int) -> list[int]:
    """``values`` summed over the ranks of the default group (``values`` itself for one process)."""
    if world == 1:
        return values
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.int64, device=backend_device)
    dist.all_reduce(total)
    return [int(v) for v in total.tolist()]


def run(args: argparse.Namespace) -> EvalResult | None:
    """Score the model and write the result; under torchrun every rank encodes its shard of the inputs and only
    rank 0 writes the JSON and prints the table (the other ranks return None)."""
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.output is not None and args.output.is_dir():
        raise ValueError(f"--output {args.output} is a directory; give a file name ending in .json")
    runner, dataset, needs = prepare(args)
    device = resolve_device(args.device)
    retain_freed_memory(device)
    rank, world, _ = init_distributed(device)
    try:
        result = _score(args, runner, dataset, needs, device, rank, world)
        if world > 1:
            dist.barrier()  # every rank leaves the group once rank 0 has written the result
        return result
    finally:
        leave_process_group()


def _score(
    args: argparse.Namespace,
    runner: Runner,
    dataset: dict,
    needs: tuple[str, ...],
    device: torch.device,
    rank: int,
    world: int,
) -> EvalResult | None:
    model = load_model(
        args.model,
        device=str(device),
        trust_remote_code=args.trust_remote_code,
        options=_model_options(args),
    )
    check_capabilities(model, needs, args.task)
    if args.task == "mmeb" and not isinstance(model, InterleavedModel):
        check_capabilities(model, ("encode_image", "encode_text"), "mmeb (score fusion of a two-tower model)")
    fingerprint = model_fingerprint(model)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    enc = tasks.EncodeSettings(FeatureCache(cache_dir, fingerprint), args.batch_size, args.workers)
    outcome = runner(model, enc)
    hits, misses = _summed_over_ranks([enc.cache.hits, enc.cache.misses], world)
    if rank != 0:
        return None
    settings = {
        "batch_size": args.batch_size,
        "device": str(args.device),
        "cache": str(cache_dir) if cache_dir else None,
        "cache_hits": hits,
        "cache_misses": misses,
    }
    if world > 1:
        settings["world_size"] = world
    result = EvalResult(
        task=args.task,
        dataset=dataset,
        model={"spec": args.model, "fingerprint": fingerprint, "config": model_config(model)},
        metrics=outcome.metrics,
        counts=outcome.counts,
        settings=settings,
        details=outcome.details,
        ties=outcome.ties,
    )
    output = args.output or Path("eval_results") / f"{args.task}_{dataset['name']}_{fingerprint[:12]}.json"
    result.save(output)
    print(metrics_table(result))  # noqa: T201
    print(f"\nwrote {output}")  # noqa: T201
    return result


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    listing = mmeb_v2.listing(sys.argv[1:] if argv is None else argv)
    if listing is not None:
        print(listing)  # noqa: T201
        return 0
    args = build_parser().parse_args(argv)
    try:
        if args.task == "report":
            table = report_table([EvalResult.load(p) for p in args.results], references=args.references)
            print(table)  # noqa: T201
            if args.output:
                args.output.write_text(table + "\n")
            return 0
        if args.task == "index":
            return run_index(args)
        run(args)
    except (LayoutError, ModelSpecError, CapabilityError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)  # noqa: T201
        return 2
    return 0
