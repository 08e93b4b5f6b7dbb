"""The six evaluation tasks: each scores a protocol model on already-validated data and returns a
:class:`TaskResult`; the CLI wraps them into result files."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from core import metrics as M
from core.fingerprint import file_stamp
from core.protocol import EmbeddingModel, ImageTextModel
from core.staging import write_text_atomic
from evaluate.cache import FeatureCache
from evaluate.datasets import (
    MMVP_PROMPT,
    ImageFolderData,
    MMEBSubset,
    MMVPData,
    RetrievalData,
    WinogroundData,
)
from evaluate.encoding import encode_images, encode_interleaved, encode_texts
from evaluate.references import META_TASKS, MMEB_BY_NAME

logger = logging.getLogger(__name__)

Template = str | Callable[[str], str]
RETRIEVAL_CHUNK = 1024  # retrieval queries scored at a time

# Tie rule of each ranking task (core/metrics.py), the one its reference numbers were made with (docs/evaluate.md,
# "Ties"): CLIP_benchmark and DINO order tied candidates by torch.topk / torch.sort, an arbitrary order whose
# unbiased value is "expected"; VLM2Vec takes np.argmax with the positive first, so it wins its ties.
DEFAULT_TIES = {"zeroshot": "expected", "retrieval": "expected", "mmeb": "optimistic", "knn": "expected"}
# Fixed rules of the pairwise tasks (no --ties): strict ">" for Winoground; SAIL's / MMVP's for MMVP-VLM.
WINOGROUND_TIES = "strict"
MMVP_TIES = "sail"


@dataclass
class TaskResult:
    metrics: dict[str, float]
    counts: dict[str, int]
    details: dict
    # {"rule": tie rule, "tied": {metric: queries the rule decided}} (EvalResult.ties)
    ties: dict = field(default_factory=dict)


@dataclass
class EncodeSettings:
    cache: FeatureCache
    batch_size: int = 64
    workers: int = 0


def _apply(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


def zeroshot_classifier(
    model: ImageTextModel, classnames: Sequence[str], templates: Sequence[Template], enc: EncodeSettings
) -> Tensor:
    """[C, D] class weights: mean of the normalised template embeddings of each class, renormalised
    (CLIP's prompt ensembling, as open_clip's ``build_zero_shot_classifier``)."""
    texts = [_apply(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, texts, enc.cache, enc.batch_size, desc="class prompts")
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def zeroshot(
    model: ImageTextModel,
    data: ImageFolderData,
    classnames: Sequence[str],
    templates: Sequence[Template],
    enc: EncodeSettings,
    ties: str = DEFAULT_TIES["zeroshot"],
) -> TaskResult:
    """Classify each image among *all* classes; top-1/top-5 and mean per-class recall over classes with images.
    Identical class names (ImageNet's two 'missile' and 'sunglasses' classes) give identical class weights, so
    their images always tie: ``ties`` scores them."""
    M.check_ties(ties)
    weights = zeroshot_classifier(model, classnames, templates, enc)
    images = encode_images(model, data.images, enc.cache, enc.batch_size, enc.workers)
    logits = images @ weights.T
    targets = torch.tensor(data.labels)
    tie_counts = M.target_tie_counts(logits, targets)
    metrics = M.classification_from_counts(tie_counts, targets, ks=(1, 5), ties=ties)
    tied = tie_counts.tied_counts((1, 5), prefix="top")
    tied["mean_per_class_recall"] = tied["top1"]
    counts = {
        "images": len(data.images),
        "classes": len(classnames),
        "classes_with_images": data.classes_with_images,
        "templates": len(templates),
    }
    return TaskResult(metrics, counts, {}, {"rule": ties, "tied": tied})


def retrieval(
    model: ImageTextModel,
    data: RetrievalData,
    enc: EncodeSettings,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = DEFAULT_TIES["retrieval"],
) -> TaskResult:
    """Image->text (hit if any of the image's captions is in the top k) and text->image recall@k; ``ties``
    scores a positive tied at the cut-off (identical captions of different images tie exactly)."""
    M.check_ties(ties)
    images = encode_images(model, data.images, enc.cache, enc.batch_size, enc.workers)
    texts = encode_texts(model, data.captions, enc.cache, enc.batch_size, desc="captions")
    owner = torch.tensor(data.caption_image)
    i2t, t2i = M.image_text_tie_counts(images, texts, owner, chunk=RETRIEVAL_CHUNK)
    metrics = i2t.recall(ks, ties, prefix="i2t_R@") | t2i.recall(ks, ties, prefix="t2i_R@")
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    tied = i2t.tied_counts(ks, prefix="i2t_R@") | t2i.tied_counts(ks, prefix="t2i_R@")
    per_image = torch.bincount(owner, minlength=len(data.images)).tolist()
    counts = {"images": len(data.images), "captions": len(data.captions)}
    return TaskResult(metrics, counts, {"captions_per_image": per_image}, {"rule": ties, "tied": tied})


def winoground(model: ImageTextModel, data: WinogroundData, enc: EncodeSettings) -> TaskResult:
    images = encode_images(
        model, list(data.images_0) + list(data.images_1), enc.cache, enc.batch_size, enc.workers
    )
    texts = encode_texts(model, list(data.captions_0) + list(data.captions_1), enc.cache, enc.batch_size)
    n = len(data.ids)
    i0, i1, c0, c1 = images[:n], images[n:], texts[:n], texts[n:]

    def sim(a: Tensor, b: Tensor) -> Tensor:
        return (a.double() * b.double()).sum(dim=1)

    scores = (sim(c0, i0), sim(c0, i1), sim(c1, i0), sim(c1, i1))
    ties = {"rule": WINOGROUND_TIES, "tied": M.winoground_tied(*scores)}
    return TaskResult(M.winoground_scores(*scores), {"examples": n}, {}, ties)


def mmvp(model: ImageTextModel, data: MMVPData, enc: EncodeSettings) -> TaskResult:
    n = len(data.categories)
    images = encode_images(
        model, list(data.images_0) + list(data.images_1), enc.cache, enc.batch_size, enc.workers
    )
    statements = [MMVP_PROMPT.format(s) for s in list(data.statements_0) + list(data.statements_1)]
    texts = encode_texts(model, statements, enc.cache, enc.batch_size, desc="statements")
    i0, i1, t0, t1 = images[:n], images[n:], texts[:n], texts[n:]

    def sim(a: Tensor, b: Tensor) -> Tensor:
        return (a.double() * b.double()).sum(dim=1)

    scores = (sim(t0, i0), sim(t0, i1), sim(t1, i0), sim(t1, i1))
    metrics = M.mmvp_scores(M.mmvp_pair_correct(*scores), data.categories)
    tied_pairs = M.mmvp_pair_tied(*scores).tolist()
    tied = {category: 0 for category in metrics}
    for category, is_tied in zip(data.categories, tied_pairs, strict=True):
        tied[category] += int(is_tied)
    tied["average"] = sum(tied_pairs)
    counts = {"pairs": n, "categories": len(set(data.categories))}
    return TaskResult(metrics, counts, {}, {"rule": MMVP_TIES, "tied": tied})


class MMEBScores:
    """Finished datasets' scores of one model, kept beside its feature cache (``FINGERPRINT/mmeb-scores/``) so a
    restarted ``evaluate mmeb`` skips them: one JSON per dataset, keyed by a digest of its inputs (texts, image
    paths with size and mtime) and the tie rule, written atomically by rank 0 once the dataset is scored. Every
    rank reads an entry before it starts that dataset, which is before rank 0 can have written it in this run (the
    dataset's all-gathers need every rank), so all ranks skip the same datasets. No cache directory: no store."""

    def __init__(self, cache: FeatureCache, ties: str) -> None:
        self.root = None if cache.root is None else cache.root / "mmeb-scores"
        self.ties = ties

    def _path(self, subset: MMEBSubset) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha256(f"{self.ties}|{subset.name}|".encode())
        for text, image in zip(subset.query_texts, subset.query_images, strict=True):
            digest.update(f"q\x1f{text}\x1f{file_stamp(image) if image else ''}\n".encode())
        for texts, images in zip(subset.target_texts, subset.target_images, strict=True):
            for text, image in zip(texts, images, strict=True):
                digest.update(f"t\x1f{text}\x1f{file_stamp(image) if image else ''}\n".encode())
            digest.update(b"\x1e")
        return self.root / f"{subset.name}-{digest.hexdigest()[:32]}.json"

    def get(self, subset: MMEBSubset) -> dict | None:
        path = self._path(subset)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or {"score", "tied", "rows"} - set(entry):
            return None
        return entry

    def put(self, subset: MMEBSubset, entry: dict) -> None:
        path = self._path(subset)
        if path is None or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            return
        try:
            write_text_atomic(path, json.dumps(entry))
        except OSError as error:
            logger.warning("cannot keep the score of %s in %s (%s)", subset.name, path, error)


def _score_subset(model: EmbeddingModel, subset: MMEBSubset, enc: EncodeSettings, ties: str) -> dict:
    queries = encode_interleaved(
        model,
        list(zip(subset.query_texts, subset.query_images, [None] * len(subset.query_texts), strict=True)),
        enc.cache,
        enc.batch_size,
        desc=f"{subset.name} queries",
    )
    unique: dict[tuple, int] = {}
    rows = []
    for texts, paths in zip(subset.target_texts, subset.target_images, strict=True):
        rows.append(
            [
                unique.setdefault((text, path, None), len(unique))
                for text, path in zip(texts, paths, strict=True)
            ]
        )
    targets = encode_interleaved(
        model, list(unique), enc.cache, enc.batch_size, desc=f"{subset.name} targets"
    )
    scores = [queries[i].double() @ targets[torch.tensor(row)].double().T for i, row in enumerate(rows)]
    tie_counts = M.first_candidate_tie_counts(scores)
    return {
        "score": 100.0 * float(tie_counts.hits(1, ties).mean()),
        "tied": int(tie_counts.tied(1).sum()),
        "rows": len(rows),
    }


def mmeb(
    model: EmbeddingModel,
    subsets: Sequence[MMEBSubset],
    enc: EncodeSettings,
    ties: str = DEFAULT_TIES["mmeb"],
) -> TaskResult:
    """Precision@1 per subset (positive = candidate 0; ``ties`` scores a negative equal to it, by default
    VLM2Vec's argmax, which the positive wins), averaged per meta-task, IND, OOD and overall (unweighted means
    over the datasets present). Tie counts are per dataset. A dataset scored by an earlier, interrupted run of
    the same model on the same inputs is taken from :class:`MMEBScores` (not encoded again)."""
    M.check_ties(ties)
    store = MMEBScores(enc.cache, ties)
    per_dataset: dict[str, float] = {}
    counts: dict[str, int] = {}
    tied: dict[str, int] = {}
    resumed: list[str] = []
    for subset in tqdm(subsets, desc="MMEB datasets", unit="dataset", disable=len(subsets) < 2):
        entry = store.get(subset)
        if entry is None:
            entry = _score_subset(model, subset, enc, ties)
            store.put(subset, entry)
        else:
            resumed.append(subset.name)
        per_dataset[subset.name] = float(entry["score"])
        tied[subset.name] = int(entry["tied"])
        counts[subset.name] = int(entry["rows"])
    if resumed:
        logger.info(
            "MMEB: %d datasets scored by an earlier run, not encoded again: %s", len(resumed), resumed
        )
    metrics = aggregate_mmeb(per_dataset)
    details = {
        "per_dataset": per_dataset,
        "blank_candidates": {s.name: s.blank_candidates for s in subsets if s.blank_candidates},
        "dangling_image_tokens": {
            s.name: s.dangling_image_tokens for s in subsets if s.dangling_image_tokens
        },
        "resumed": resumed,
    }
    return TaskResult(metrics, counts | {"datasets": len(per_dataset)}, details, {"rule": ties, "tied": tied})


def aggregate_mmeb(per_dataset: dict[str, float]) -> dict[str, float]:
    """Meta-task, IND, OOD and overall means of the per-dataset Precision@1 (only over datasets present)."""
    unknown = sorted(set(per_dataset) - set(MMEB_BY_NAME))
    if unknown:
        raise ValueError(f"not MMEB datasets: {unknown}; known: {sorted(MMEB_BY_NAME)}")

    def mean(names: list[str]) -> float | None:
        return sum(per_dataset[n] for n in names) / len(names) if names else None

    groups: dict[str, list[str]] = {m: [] for m in META_TASKS} | {"IND": [], "OOD": []}
    for name in per_dataset:
        groups[MMEB_BY_NAME[name].meta_task].append(name)
        groups[MMEB_BY_NAME[name].split].append(name)
    metrics = {group: value for group, names in groups.items() if (value := mean(names)) is not None}
    metrics["overall"] = mean(list(per_dataset))
    return metrics


def knn(
    model: ImageTextModel,
    train: ImageFolderData,
    val: ImageFolderData,
    enc: EncodeSettings,
    ks: Sequence[int] = M.KNN_KS,
    temperature: float = M.KNN_TEMPERATURE,
    ties: str = DEFAULT_TIES["knn"],
) -> TaskResult:
    """DINO's weighted kNN top-1 / top-5 for each k; ``ties`` scores a target tied in the class vote (a target
    no neighbour voted for ties with every other unvoted class)."""
    M.check_ties(ties)
    train_emb = encode_images(
        model, train.images, enc.cache, enc.batch_size, enc.workers, desc="train images"
    )
    val_emb = encode_images(model, val.images, enc.cache, enc.batch_size, enc.workers, desc="val images")
    tie_counts = M.knn_tie_counts(
        train_emb, train.labels, val_emb, val.labels, ks, temperature, len(train.classes)
    )
    metrics = M.knn_from_counts(tie_counts, ties)
    tied: dict[str, int] = {}
    for k, c in tie_counts.items():
        tied |= c.tied_counts((1, 5), prefix=f"k{k}_top")
    counts = {"train_images": len(train.images), "val_images": len(val.images), "classes": len(train.classes)}
    return TaskResult(metrics, counts, {"temperature": temperature}, {"rule": ties, "tied": tied})
