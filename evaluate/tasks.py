"""The six evaluation tasks: each scores a protocol model on already-validated data and returns
``(metrics, counts, extra)``; the CLI wraps them into result files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core import metrics as M
from core.protocol import EmbeddingModel, ImageTextModel
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

Template = str | Callable[[str], str]
RETRIEVAL_CHUNK = 1024  # retrieval queries scored at a time


@dataclass
class TaskResult:
    metrics: dict[str, float]
    counts: dict[str, int]
    details: dict


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
) -> TaskResult:
    """Classify each image among *all* classes; top-1/top-5 and mean per-class recall over classes with images."""
    weights = zeroshot_classifier(model, classnames, templates, enc)
    images = encode_images(model, data.images, enc.cache, enc.batch_size, enc.workers)
    logits = images @ weights.T
    metrics = M.classification_metrics(logits, torch.tensor(data.labels), ks=(1, 5))
    counts = {
        "images": len(data.images),
        "classes": len(classnames),
        "classes_with_images": data.classes_with_images,
        "templates": len(templates),
    }
    return TaskResult(metrics, counts, {})


def retrieval(
    model: ImageTextModel, data: RetrievalData, enc: EncodeSettings, ks: Sequence[int] = (1, 5, 10)
) -> TaskResult:
    """Image->text (hit if any of the image's captions is in the top k) and text->image recall@k."""
    images = encode_images(model, data.images, enc.cache, enc.batch_size, enc.workers)
    texts = encode_texts(model, data.captions, enc.cache, enc.batch_size, desc="captions")
    owner = torch.tensor(data.caption_image)
    metrics = M.image_text_retrieval(images, texts, owner, ks, chunk=RETRIEVAL_CHUNK)
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    per_image = torch.bincount(owner, minlength=len(data.images)).tolist()
    counts = {"images": len(data.images), "captions": len(data.captions)}
    return TaskResult(metrics, counts, {"captions_per_image": per_image})


def winoground(model: ImageTextModel, data: WinogroundData, enc: EncodeSettings) -> TaskResult:
    images = encode_images(
        model, list(data.images_0) + list(data.images_1), enc.cache, enc.batch_size, enc.workers
    )
    texts = encode_texts(model, list(data.captions_0) + list(data.captions_1), enc.cache, enc.batch_size)
    n = len(data.ids)
    i0, i1, c0, c1 = images[:n], images[n:], texts[:n], texts[n:]

    def sim(a: Tensor, b: Tensor) -> Tensor:
        return (a.double() * b.double()).sum(dim=1)

    metrics = M.winoground_scores(sim(c0, i0), sim(c0, i1), sim(c1, i0), sim(c1, i1))
    return TaskResult(metrics, {"examples": n}, {})


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

    correct = M.mmvp_pair_correct(sim(t0, i0), sim(t0, i1), sim(t1, i0), sim(t1, i1))
    metrics = M.mmvp_scores(correct, data.categories)
    return TaskResult(metrics, {"pairs": n, "categories": len(set(data.categories))}, {})


def mmeb(model: EmbeddingModel, subsets: Sequence[MMEBSubset], enc: EncodeSettings) -> TaskResult:
    """Precision@1 per subset (positive = candidate 0, ties are misses), averaged per meta-task, IND, OOD and
    overall (unweighted means over the datasets present)."""
    per_dataset: dict[str, float] = {}
    counts: dict[str, int] = {}
    for subset in subsets:
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
            row = []
            for text, path in zip(texts, paths, strict=True):
                row.append(unique.setdefault((text, path, None), len(unique)))
            rows.append(row)
        targets = encode_interleaved(
            model, list(unique), enc.cache, enc.batch_size, desc=f"{subset.name} targets"
        )
        scores = [queries[i].double() @ targets[torch.tensor(row)].double().T for i, row in enumerate(rows)]
        per_dataset[subset.name] = M.precision_at_1(scores)
        counts[subset.name] = len(rows)
    metrics = aggregate_mmeb(per_dataset)
    return TaskResult(metrics, counts | {"datasets": len(per_dataset)}, {"per_dataset": per_dataset})


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
) -> TaskResult:
    train_emb = encode_images(
        model, train.images, enc.cache, enc.batch_size, enc.workers, desc="train images"
    )
    val_emb = encode_images(model, val.images, enc.cache, enc.batch_size, enc.workers, desc="val images")
    metrics = M.knn_accuracy(
        train_emb, train.labels, val_emb, val.labels, ks, temperature, len(train.classes)
    )
    counts = {"train_images": len(train.images), "val_images": len(val.images), "classes": len(train.classes)}
    return TaskResult(metrics, counts, {"temperature": temperature})
