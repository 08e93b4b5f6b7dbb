"""Every evaluation metric of the toolkit, in one place (the trainers import their validation metrics from here).

Tie convention (all metrics): **ties never favour the positive**. Wherever a positive and a negative have the
same score, the negative is ranked first: the rank of a positive is the number of negatives scoring *at least*
as high, and a strict comparison (``>``) decides pairwise choices (Winoground, MMVP-VLM, MMEB). This is the
pessimistic convention; a constant-score model therefore scores 0, never 100.

Scores are similarities (higher = better). Inputs may be torch tensors or numpy arrays; everything is computed
in float64 on the CPU copy of the scores, so results do not depend on the device or dtype of the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

KNN_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07


def _as_tensor(x: ArrayLike | Sequence, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _check_scores(scores: Tensor, name: str = "scores") -> None:
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D [queries, candidates], got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contain NaN; check the embeddings (a failed encode?) before scoring")


def positive_ranks(scores: ArrayLike, positives: ArrayLike) -> Tensor:
    """0-based rank of the best-scoring positive of each query, ties counted against it.

    Args:
        scores: [Q, C] similarities of each query to each candidate.
        positives: [Q, C] bool mask, True where the candidate is a positive of the query (one or more per query).

    Returns:
        [Q] int64: the number of *negatives* whose score is >= the highest positive score. Other positives
        never push a positive down ("hit if any positive is in the top k").
    """
    s = _as_tensor(scores, torch.float64)
    pos = _as_tensor(positives, torch.bool)
    _check_scores(s)
    if pos.shape != s.shape:
        raise ValueError(f"positives mask shape {tuple(pos.shape)} != scores shape {tuple(s.shape)}")
    no_positive = ~pos.any(dim=1)
    if no_positive.any():
        first = int(no_positive.nonzero()[0, 0])
        raise ValueError(
            f"{int(no_positive.sum())} queries have no positive candidate (first: query {first})"
        )
    best_positive = s.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)
    return ((s >= best_positive) & ~pos).sum(dim=1)


def recall_at_k(ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10), prefix: str = "R@") -> dict[str, float]:
    """Percentage of queries whose positive rank is < k, for each k: ``{"R@1": 55.0, ...}``."""
    r = _as_tensor(ranks, torch.int64)
    if r.numel() == 0:
        raise ValueError("no queries to score")
    return {f"{prefix}{k}": 100.0 * float((r < k).double().mean()) for k in ks}


def retrieval_recall(
    scores: ArrayLike, positives: ArrayLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k in percent: a query is a hit at k if any of its positives is among its top-k candidates.

    Args:
        scores: [Q, C] similarities (e.g. image embeddings @ caption embeddings.T for image->text).
        positives: [Q, C] bool mask of positives; several per query allowed (COCO's 5 captions per image).
        ks: cut-offs.

    Ties are counted against the positive (see the module docstring). For image-text retrieval at scale use
    :func:`image_text_retrieval`, which scores the queries chunk by chunk.
    """
    return recall_at_k(positive_ranks(scores, positives), ks)


def _chunked_ranks(
    queries: Tensor, candidates: Tensor, query_ids: Tensor, candidate_ids: Tensor, chunk: int
) -> Tensor:
    """:func:`positive_ranks` of ``queries @ candidates.T``, ``chunk`` queries at a time; a candidate is a
    positive of a query when their ids are equal."""
    return torch.cat(
        [
            positive_ranks(
                queries[start : start + chunk] @ candidates.T,
                query_ids[start : start + chunk, None] == candidate_ids[None, :],
            )
            for start in range(0, queries.shape[0], chunk)
        ]
    )


def image_text_retrieval(
    image: Tensor,
    text: Tensor,
    caption_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 4096,
) -> dict[str, float]:
    """Image->text and text->image Recall@k in percent, ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}``.

    Args:
        image: [N, D] image embeddings (normalised, so the dot product is the cosine).
        text: [M, D] caption embeddings.
        caption_image: [M] index in ``image`` of each caption's image; every image needs at least one caption.
        ks: cut-offs.
        chunk: queries scored at a time (bounds memory to ``chunk x max(N, M)`` scores; no effect on values).

    Image->text: a hit at k if any of the image's captions is among its top k captions; text->image: a hit if
    the caption's image is among its top k images. Scores are the embeddings' products in their own dtype;
    ranks follow :func:`positive_ranks` (ties counted against the positive).
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image and text embeddings must be 2-D with the same dimension, got {tuple(image.shape)} "
            f"and {tuple(text.shape)}"
        )
    if image.shape[0] == 0:
        raise ValueError("no images to score")
    owner = _as_tensor(caption_image, torch.int64)
    if owner.shape != (text.shape[0],):
        raise ValueError(f"caption_image must have shape ({text.shape[0]},), got {tuple(owner.shape)}")
    if owner.numel() and (owner.min() < 0 or owner.max() >= image.shape[0]):
        raise ValueError(f"caption_image must lie in [0, {image.shape[0]})")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    uncaptioned = torch.bincount(owner, minlength=image.shape[0]) == 0
    if uncaptioned.any():
        first = int(uncaptioned.nonzero()[0, 0])
        raise ValueError(f"{int(uncaptioned.sum())} images have no caption (first: image {first})")
    image_ids = torch.arange(image.shape[0])
    i2t = _chunked_ranks(image, text, image_ids, owner, chunk)
    t2i = _chunked_ranks(text, image, owner, image_ids, chunk)
    return recall_at_k(i2t, ks, prefix="i2t_R@") | recall_at_k(t2i, ks, prefix="t2i_R@")


def target_ranks(logits: ArrayLike, targets: ArrayLike) -> Tensor:
    """0-based rank of the target class of each sample: number of other classes scoring >= the target."""
    s = _as_tensor(logits, torch.float64)
    _check_scores(s, "logits")
    t = _as_tensor(targets, torch.int64)
    if t.shape != (s.shape[0],):
        raise ValueError(f"targets must have shape ({s.shape[0]},), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got range [{int(t.min())}, {int(t.max())}]")
    positives = torch.zeros_like(s, dtype=torch.bool)
    positives[torch.arange(s.shape[0]), t] = True
    return positive_ranks(s, positives)


def topk_accuracy(logits: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, ``{"top1": ..., "top5": ...}``; a tie with the target counts as a miss."""
    return recall_at_k(target_ranks(logits, targets), ks, prefix="top")


def mean_per_class_recall(correct: ArrayLike, targets: ArrayLike) -> float:
    """Mean over classes *that have samples* of the fraction of their samples classified correctly (percent).

    Args:
        correct: [N] bool, whether sample i was classified correctly (e.g. ``target_ranks(...) == 0``).
        targets: [N] class index of sample i. Classes without samples are not part of the mean.
    """
    c = _as_tensor(correct, torch.float64)
    t = _as_tensor(targets, torch.int64)
    if c.shape != t.shape or c.ndim != 1 or c.numel() == 0:
        raise ValueError(
            f"correct and targets must be equal-length non-empty 1-D, got {c.shape} and {t.shape}"
        )
    classes, inverse = torch.unique(t, return_inverse=True)
    hits = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, c)
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    return 100.0 * float((hits / counts).mean())


def classification_metrics(
    logits: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies plus ``mean_per_class_recall`` (over classes present in ``targets``)."""
    ranks = target_ranks(logits, targets)
    metrics = recall_at_k(ranks, ks, prefix="top")
    metrics["mean_per_class_recall"] = mean_per_class_recall(ranks == 0, targets)
    return metrics


def winoground_scores(
    c0_i0: ArrayLike, c0_i1: ArrayLike, c1_i0: ArrayLike, c1_i1: ArrayLike
) -> dict[str, float]:
    """Winoground text, image and group scores in percent (Thrush et al., 2022, Sec. 3.3).

    ``cX_iY`` is the [N] similarity of caption X with image Y. Text score: each image prefers its own caption,
    ``c0_i0 > c1_i0 and c1_i1 > c0_i1``. Image score: each caption prefers its own image,
    ``c0_i0 > c0_i1 and c1_i1 > c1_i0``. Group: both. Strict inequalities, so ties are misses.
    """
    a, b, c, d = (_as_tensor(x, torch.float64) for x in (c0_i0, c0_i1, c1_i0, c1_i1))
    if not (a.shape == b.shape == c.shape == d.shape) or a.ndim != 1 or a.numel() == 0:
        raise ValueError("the four Winoground score vectors must be non-empty, 1-D and of equal length")
    text = (a > c) & (d > b)
    image = (a > b) & (d > c)
    return {
        "text": 100.0 * float(text.double().mean()),
        "image": 100.0 * float(image.double().mean()),
        "group": 100.0 * float((text & image).double().mean()),
    }


def mmvp_pair_correct(t0_i0: ArrayLike, t0_i1: ArrayLike, t1_i0: ArrayLike, t1_i1: ArrayLike) -> Tensor:
    """MMVP-VLM: [N] bool, whether each pair of statements is right (Tong et al., 2024, "Eyes Wide Shut?").

    Statement 0 belongs to image 0 and statement 1 to image 1; ``tX_iY`` is the similarity of statement X
    with image Y. A statement picks the image it is more similar to; a pair is right only if *both* statements
    pick their own image (``t0_i0 > t0_i1 and t1_i1 > t1_i0``, strict, so a tie is a miss).
    """
    a, b, c, d = (_as_tensor(x, torch.float64) for x in (t0_i0, t0_i1, t1_i0, t1_i1))
    if not (a.shape == b.shape == c.shape == d.shape) or a.ndim != 1:
        raise ValueError("the four MMVP score vectors must be 1-D and of equal length")
    return (a > b) & (d > c)


def mmvp_scores(correct: ArrayLike, categories: Sequence[str]) -> dict[str, float]:
    """Per-category pair accuracy (percent) and their unweighted ``average`` (the number MMVP reports)."""
    ok = _as_tensor(correct, torch.float64)
    if ok.ndim != 1 or len(categories) != ok.numel() or ok.numel() == 0:
        raise ValueError("correct and categories must be non-empty and of equal length")
    per_category: dict[str, list[float]] = {}
    for category, value in zip(categories, ok.tolist(), strict=True):
        per_category.setdefault(category, []).append(value)
    metrics = {name: 100.0 * sum(v) / len(v) for name, v in per_category.items()}
    metrics["average"] = sum(metrics.values()) / len(metrics)
    return metrics


def precision_at_1(scores: ArrayLike | Sequence[ArrayLike]) -> float:
    """MMEB Precision@1 in percent: the positive is candidate 0 of each query; a hit needs it strictly best.

    Args:
        scores: [Q, C] (or a list of Q 1-D score vectors when queries have different candidate counts), with
            the positive in column 0. A negative scoring equal to the positive makes the query a miss (unlike
            VLM2Vec v1's ``argmax``, which picks the first maximum, i.e. the positive).
    """
    rows = [scores] if isinstance(scores, (Tensor, np.ndarray)) else list(scores)
    if len(rows) == 1 and _as_tensor(rows[0], torch.float64).ndim == 2:
        rows = list(_as_tensor(rows[0], torch.float64))
    if not rows:
        raise ValueError("no queries to score")
    hits = 0
    for i, row in enumerate(rows):
        r = _as_tensor(row, torch.float64)
        if r.ndim != 1 or r.numel() < 2:
            raise ValueError(
                f"query {i}: need a 1-D score vector over >= 2 candidates, got shape {tuple(r.shape)}"
            )
        if torch.isnan(r).any():
            raise ValueError(f"query {i}: scores contain NaN")
        hits += bool(r[0] > r[1:].max())
    return 100.0 * hits / len(rows)


def knn_predict_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> Tensor:
    """DINO's weighted kNN vote (Caron et al., 2021; ``eval_knn.py``): [Q, num_classes] class scores.

    Features must be L2-normalised. Each query takes its k most similar training samples (cosine) and adds
    ``exp(similarity / temperature)`` to the score of each neighbour's class.
    """
    if (
        train_features.ndim != 2
        or query_features.ndim != 2
        or train_features.shape[1] != query_features.shape[1]
    ):
        raise ValueError("train and query features must be 2-D with the same dimension")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError("train_labels must have one label per training feature")
    k = min(k, train_features.shape[0])
    train_t = train_features.double().T
    labels = train_labels.long()
    out = []
    for start in range(0, query_features.shape[0], chunk_size):
        sim = query_features[start : start + chunk_size].double() @ train_t
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes, dtype=torch.float64)


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    query_features: ArrayLike,
    query_labels: ArrayLike,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Weighted kNN top-1 / top-5 accuracy (percent) for each k: ``{"k10_top1": ..., "k10_top5": ...}``.

    ``num_classes`` defaults to 1 + the largest label; a class no neighbour votes for scores 0, so a target
    without votes is a miss (it ties with every other unvoted class).
    """
    train = _as_tensor(train_features, torch.float64)
    query = _as_tensor(query_features, torch.float64)
    train_y = _as_tensor(train_labels, torch.int64)
    query_y = _as_tensor(query_labels, torch.int64)
    if num_classes is None:
        num_classes = int(max(train_y.max(), query_y.max())) + 1
    metrics: dict[str, float] = {}
    for k in ks:
        votes = knn_predict_scores(train, train_y, query, num_classes, k, temperature)
        for name, value in topk_accuracy(votes, query_y, (1, 5)).items():
            metrics[f"k{k}_{name}"] = value
    return metrics
