"""``python -m evaluate index build|search``: an exact FAISS index of a folder's image embeddings, searched by text
(or by an image).

An index is a folder:

- ``index.faiss``: a ``faiss.IndexFlatIP`` of the L2-normalised image embeddings (exact inner product, i.e.
  cosine similarity; row i is image i);
- ``images.json``: the image paths, relative to the images folder, in row order;
- ``index_config.json``: an :class:`IndexConfig` (the model spec and fingerprint, the images folder, sizes).

``build`` encodes in chunks of ``--chunk-size`` images, each cached by the evaluate feature cache, so a run that
was stopped resumes at its first unfinished chunk; the folder is written beside ``--out`` and renamed into place
once complete. ``search`` embeds the query with the index's own model and refuses another one.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.protocol import check_capabilities
from core.staging import staged_folder
from evaluate.cache import FeatureCache, default_cache_dir, model_config, model_fingerprint
from evaluate.encoding import encode_images, open_image
from evaluate.models import OPEN_CLIP_PREFIX, load_model

INDEX_FORMAT = "evaluate-index-v1"
CONFIG_NAME = "index_config.json"
IMAGES_NAME = "images.json"
FAISS_NAME = "index.faiss"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class IndexFolderError(ValueError):
    """An index folder that cannot be used as asked (missing files, another model); the message says why."""


@dataclass
class IndexConfig:
    """Saved beside every index as ``index_config.json``."""

    model: str  # the --model spec; a checkpoint directory as an absolute path
    fingerprint: str  # evaluate.cache.model_fingerprint of the model that made the embeddings
    model_config: dict
    images_root: str
    count: int
    dim: int
    format: str = INDEX_FORMAT
    index_type: str = "IndexFlatIP"
    metric: str = "inner product of L2-normalised embeddings (cosine)"
    faiss_version: str = ""

    @classmethod
    def load(cls, folder: Path) -> IndexConfig:
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise IndexFolderError(
                f"{folder} is not an index folder (no {CONFIG_NAME}); build one with 'index build'"
            )
        data = json.loads(path.read_text())
        if data.get("format") != INDEX_FORMAT:
            raise IndexFolderError(f"{path} has format {data.get('format')!r}, expected {INDEX_FORMAT!r}")
        return cls(**data)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str


def model_spec(spec: str) -> str:
    """A spec as stored in the index: a checkpoint directory becomes absolute, open_clip specs stay as given."""
    if spec.startswith(OPEN_CLIP_PREFIX) or not Path(spec).exists():
        return spec
    return str(Path(spec).resolve())


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a directory")
    images = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return images


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ImportError("the index needs faiss: pip install faiss-cpu") from error
    return faiss


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")


def build_index(
    model_name: str,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 2048,
    overwrite: bool = False,
) -> IndexConfig:
    """Embed every image under ``images_dir`` with the model and write the index folder ``out``."""
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("--batch-size and --chunk-size must be >= 1")
    images_dir, out = Path(images_dir), Path(out)
    _check_destination(out, overwrite)
    images = list_images(images_dir)
    faiss = _faiss()
    model = load_model(model_name, device=device, trust_remote_code=trust_remote_code)
    check_capabilities(model, ("encode_image", "encode_text"), "index")
    fingerprint = model_fingerprint(model)
    cache = FeatureCache(cache_dir, fingerprint)
    parts = []
    starts = range(0, len(images), chunk_size)
    for start in tqdm(starts, desc="index chunks", unit="chunk", disable=len(starts) == 1):
        parts.append(encode_images(model, images[start : start + chunk_size], cache, batch_size, workers))
    embeddings = F.normalize(torch.cat(parts), dim=-1).numpy().astype(np.float32)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    config = IndexConfig(
        model=model_spec(model_name),
        fingerprint=fingerprint,
        model_config=model_config(model),
        images_root=str(images_dir.resolve()),
        count=len(images),
        dim=int(embeddings.shape[1]),
        faiss_version=str(getattr(faiss, "__version__", "")),
    )
    with staged_folder(out) as staging:
        faiss.write_index(index, str(staging / FAISS_NAME))
        relative = [path.relative_to(images_dir).as_posix() for path in images]
        (staging / IMAGES_NAME).write_text(json.dumps(relative, indent=0) + "\n")
        (staging / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return config


def _load_index(folder: Path):
    config = IndexConfig.load(folder)
    for name in (FAISS_NAME, IMAGES_NAME):
        if not (folder / name).is_file():
            raise IndexFolderError(f"{folder} has no {name}; rebuild the index")
    index = _faiss().read_index(str(folder / FAISS_NAME))
    paths = json.loads((folder / IMAGES_NAME).read_text())
    if index.ntotal != len(paths) or index.ntotal != config.count:
        raise IndexFolderError(
            f"{folder}: {index.ntotal} vectors, {len(paths)} paths, {config.count} in the config; rebuild it"
        )
    return config, index, paths


def search_index(
    folder: str | os.PathLike,
    query: str,
    k: int = 8,
    model_name: str | None = None,
    image_query: bool = False,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> list[Hit]:
    """The ``k`` images nearest to the query (a text, or an image file with ``image_query``), best first.

    The query is embedded with the index's model (``model_name`` None) or with ``model_name``, which must be the
    same model: a model whose fingerprint differs from the index's is refused, as is the index's own spec when
    its checkpoint changed since the build."""
    if k < 1:
        raise ValueError("-k must be >= 1")
    folder = Path(folder)
    config, index, paths = _load_index(folder)
    if image_query and not Path(query).is_file():
        raise FileNotFoundError(f"--image query {query} is not a file")
    spec = config.model if model_name is None else model_name
    model = load_model(spec, device=device, trust_remote_code=trust_remote_code)
    fingerprint = model_fingerprint(model)
    if fingerprint != config.fingerprint:
        given = "the query model " + (f"{model_name!r}" if model_name is not None else f"{spec!r} today")
        raise IndexFolderError(
            f"{folder} was built with the model {config.model!r} (fingerprint {config.fingerprint[:12]}); "
            f"{given} has fingerprint {fingerprint[:12]}, so their embeddings are not comparable. Search with "
            "the index's own model (leave out --model), or rebuild the index with this model"
        )
    with torch.inference_mode():
        if image_query:
            vector = model.encode_image([open_image(Path(query))], normalize=True)
        else:
            vector = model.encode_text([query], normalize=True)
    vector = F.normalize(vector.float().cpu(), dim=-1).numpy().astype(np.float32)
    scores, ids = index.search(vector, min(k, index.ntotal))
    root = Path(config.images_root)
    return [
        Hit(rank=rank + 1, score=float(score), path=str(root / paths[row]))
        for rank, (score, row) in enumerate(zip(scores[0], ids[0], strict=True))
    ]


def add_index_parser(sub: argparse._SubParsersAction) -> None:
    """The ``index`` subcommand (``build`` / ``search``) of ``python -m evaluate``."""
    parser = sub.add_parser(
        "index",
        help="build a FAISS index of a folder of images, or search one by text",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="index_action", required=True)

    p = actions.add_parser("build", help="embed every image under --images and write the index folder --out")
    p.add_argument("--model", required=True, help="a --model spec of the evaluate tasks (see their --help)")
    p.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="index folder to write (must not exist)")
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading images (default 0)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        help="images per cached chunk; a stopped build resumes at its first unfinished chunk (default 2048)",
    )
    _model_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache directory (default: $EVALUATE_CACHE_DIR or ~/.cache/multimodal-toolkit/evaluate)",
    )
    cache.add_argument("--no-cache", action="store_true", help="cache no chunk (a stopped build starts over)")

    p = actions.add_parser("search", help="print the images nearest to a text query, best first")
    p.add_argument("index", type=Path, help="an index folder written by 'index build'")
    p.add_argument("query", help="the query text (with --image: an image file)")
    p.add_argument("-k", type=int, default=8, help="number of results (default 8)")
    p.add_argument(
        "--model",
        default=None,
        help="the query model (default: the index's own); any other model is refused",
    )
    p.add_argument("--image", action="store_true", help="the query is an image file: search by image")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _model_arguments(p)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="let the model's loader run hub code")


def run_index(args: argparse.Namespace) -> int:
    """Run ``index build`` or ``index search`` (errors propagate to the evaluate CLI, which prints them)."""
    if args.index_action == "build":
        cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
        config = build_index(
            args.model,
            args.images,
            args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            cache_dir=cache_dir,
            chunk_size=args.chunk_size,
            overwrite=args.overwrite,
        )
        print(f"wrote {args.out}: {config.count} images, {config.dim}-d, model {config.model}")  # noqa: T201
        return 0
    hits = search_index(
        args.index,
        args.query,
        args.k,
        model_name=args.model,
        image_query=args.image,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    if args.json:
        payload = {"index": str(args.index), "query": args.query, "results": [asdict(hit) for hit in hits]}
        print(json.dumps(payload, indent=2))  # noqa: T201
    else:
        for hit in hits:
            print(f"{hit.rank:>3}  {hit.score:+.4f}  {hit.path}")  # noqa: T201
    return 0
