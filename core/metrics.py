"""Every evaluation metric of the toolkit, in one place (the trainers import their validation metrics from here).

Ties. A query *ties* when a negative scores exactly as high as its best positive (identical class names, identical
captions, bf16 embeddings). Every ranking metric takes ``ties``, the rule that scores such a query:

- ``"pessimistic"`` (the default of every function here): the positive loses its ties; its rank is the number of
  negatives scoring *at least* as high, so a constant-score model scores 0, never 100.
- ``"optimistic"``: the positive wins its ties; its rank is the number of negatives scoring strictly higher.
- ``"expected"``: the expected credit of a random tie-break. With ``s`` slots left above the cut-off once the
  candidates scoring strictly higher are placed, and ``k`` candidates tied at the best positive score of which ``m``
  are positives, the query is a hit with probability ``1 - C(k - m, s) / C(k, s)`` (``s / k`` for one positive).

All three are computed once, from three numbers per query (:class:`TieCounts`): the negatives strictly above the
best positive, the negatives tied with it and the positives tied with it. A query is *tied at* a cut-off when the
rule decides it there (winning its ties gives a hit, losing them a miss); on tie-free scores the three rules agree.
Other positives never push a positive down ("hit if any positive is in the top k"). The evaluation tasks choose
the rule of the reference code of each benchmark (``evaluate/tasks.py``). Pairwise choices have fixed rules:
Winoground is strict (``>``, ties are misses), MMVP-VLM follows SAIL / MMVP (:func:`mmvp_pair_correct`).

Scores are similarities (higher = better). Inputs may be torch tensors or numpy arrays; everything is computed
in float64 on the CPU copy of the scores, so results do not depend on the device or dtype of the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

KNN_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07
TIES = ("optimistic", "pessimistic", "expected")


def _as_tensor(x: ArrayLike | Sequence, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _check_scores(scores: Tensor, name: str = "scores") -> None:
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D [queries, candidates], got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contain NaN; check the embeddings (a failed encode?) before scoring")


def check_ties(ties: str) -> str:
    """``ties`` if it is one of :data:`TIES`, else a ValueError naming them."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}; got {ties!r}")
    return ties


@dataclass(frozen=True)
class TieCounts:
    """What decides each query's hit at any cut-off, under any tie rule ([Q] int64 each).

    Attributes:
        above: negatives scoring strictly higher than the query's best positive.
        tied_negatives: negatives scoring exactly as high as it.
        tied_positives: positives scoring exactly as high as it (>= 1: the best positive itself).
    """

    above: Tensor
    tied_negatives: Tensor
    tied_positives: Tensor

    def __len__(self) -> int:
        return self.above.numel()

    @staticmethod
    def cat(parts: Sequence[TieCounts]) -> TieCounts:
        """The counts of several query blocks, in order."""
        return TieCounts(
            torch.cat([p.above for p in parts]),
            torch.cat([p.tied_negatives for p in parts]),
            torch.cat([p.tied_positives for p in parts]),
        )

    def ranks(self, ties: str = "pessimistic") -> Tensor:
        """[Q] 0-based rank of the best positive: the negatives placed above it. int64 for ``optimistic``
        (``above``) and ``pessimistic`` (``above + tied_negatives``); float64 for ``expected``, the mean rank of a
        random tie-break, ``above + tied_negatives / (tied_positives + 1)``. Recall under ``expected`` is not a
        function of the expected rank: use :meth:`hits` / :meth:`recall`."""
        check_ties(ties)
        if ties == "optimistic":
            return self.above.clone()
        if ties == "pessimistic":
            return self.above + self.tied_negatives
        return self.above + self.tied_negatives.double() / (self.tied_positives.double() + 1)

    def hits(self, k: int, ties: str = "pessimistic") -> Tensor:
        """[Q] float64 credit in [0, 1] of each query at cut-off ``k`` (1 = a positive is in the top k)."""
        check_ties(ties)
        if k < 1:
            raise ValueError(f"cut-offs must be >= 1, got {k}")
        slots = k - self.above  # places left above the cut-off for the tied group
        n, m = self.tied_negatives, self.tied_positives
        if ties == "optimistic":
            return (slots >= 1).double()
        if ties == "pessimistic":
            return (slots > n).double()
        undecided = self.tied(k)
        # P(no positive among the first s of the k = n + m tied) = C(n, s) / C(n + m, s) = prod_{i<s} (n-i)/(n+m-i)
        miss = torch.ones(len(self), dtype=torch.float64)
        steps = int(slots[undecided].max()) if bool(undecided.any()) else 0
        nd, md = n.double(), m.double()
        for i in range(steps):
            active = undecided & (slots > i)
            factor = (nd - i) / (nd + md - i).clamp(min=1.0)
            miss = torch.where(active, miss * factor, miss)
        return torch.where(slots > n, 1.0, torch.where(undecided, 1.0 - miss, 0.0)).double()

    def tied(self, k: int) -> Tensor:
        """[Q] bool: the tie rule decides the query at cut-off ``k`` (winning its ties is a hit, losing a miss)."""
        slots = k - self.above
        return (slots >= 1) & (slots <= self.tied_negatives)

    def recall(self, ks: Sequence[int], ties: str = "pessimistic", prefix: str = "R@") -> dict[str, float]:
        """Percentage of queries with a positive in the top k, for each k: ``{"R@1": 55.0, ...}``."""
        if len(self) == 0:
            raise ValueError("no queries to score")
        return {f"{prefix}{k}": 100.0 * float(self.hits(k, ties).mean()) for k in ks}

    def tied_counts(self, ks: Sequence[int], prefix: str = "R@") -> dict[str, int]:
        """Number of queries tied at each cut-off, keyed like :meth:`recall`: ``{"R@1": 3, ...}``."""
        return {f"{prefix}{k}": int(self.tied(k).sum()) for k in ks}


def _tie_counts(s: Tensor, pos: Tensor, valid: Tensor | None = None) -> TieCounts:
    """:class:`TieCounts` of float64 scores ``s`` [Q, C] with positives ``pos``; ``valid`` masks padding out."""
    neg = ~pos if valid is None else (~pos & valid)
    best = s.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)
    level = s == best
    return TieCounts(
        above=((s > best) & neg).sum(dim=1),
        tied_negatives=(level & neg).sum(dim=1),
        tied_positives=(level & pos).sum(dim=1),
    )


def tie_counts(scores: ArrayLike, positives: ArrayLike) -> TieCounts:
    """:class:`TieCounts` of each query.

    Args:
        scores: [Q, C] similarities of each query to each candidate.
        positives: [Q, C] bool mask, True where the candidate is a positive of the query (one or more per query).
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
    return _tie_counts(s, pos)


def positive_ranks(scores: ArrayLike, positives: ArrayLike, ties: str = "pessimistic") -> Tensor:
    """0-based rank of the best-scoring positive of each query under the tie rule ``ties``.

    Args:
        scores: [Q, C] similarities of each query to each candidate.
        positives: [Q, C] bool mask, True where the candidate is a positive of the query (one or more per query).
        ties: see the module docstring.

    Returns:
        [Q]: the number of *negatives* ranked above the best positive (:meth:`TieCounts.ranks`); pessimistic:
        those scoring >= it. Other positives never push a positive down ("hit if any positive is in the top k").
    """
    return tie_counts(scores, positives).ranks(ties)


def recall_at_k(ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10), prefix: str = "R@") -> dict[str, float]:
    """Percentage of queries whose positive rank is < k, for each k: ``{"R@1": 55.0, ...}``.

    ``ranks`` already carry a tie rule (optimistic or pessimistic ranks); for ``expected`` use
    :meth:`TieCounts.recall`, since the expected hit rate is not a function of the expected rank."""
    r = _as_tensor(ranks, torch.float64)
    if r.numel() == 0:
        raise ValueError("no queries to score")
    return {f"{prefix}{k}": 100.0 * float((r < k).double().mean()) for k in ks}


def retrieval_recall(
    scores: ArrayLike, positives: ArrayLike, ks: Sequence[int] = (1, 5, 10), ties: str = "pessimistic"
) -> dict[str, float]:
    """Recall@k in percent: a query is a hit at k if any of its positives is among its top-k candidates.

    Args:
        scores: [Q, C] similarities (e.g. image embeddings @ caption embeddings.T for image->text).
        positives: [Q, C] bool mask of positives; several per query allowed (COCO's 5 captions per image).
        ks: cut-offs.
        ties: tie rule (module docstring).

    For image-text retrieval at scale use :func:`image_text_retrieval`, which scores the queries chunk by chunk.
    """
    return tie_counts(scores, positives).recall(ks, check_ties(ties))


def _chunked_counts(
    queries: Tensor, candidates: Tensor, query_ids: Tensor, candidate_ids: Tensor, chunk: int
) -> TieCounts:
    """:func:`tie_counts` of ``queries @ candidates.T``, ``chunk`` queries at a time; a candidate is a positive of
    a query when their ids are equal."""
    return TieCounts.cat(
        [
            tie_counts(
                queries[start : start + chunk] @ candidates.T,
                query_ids[start : start + chunk, None] == candidate_ids[None, :],
            )
            for start in range(0, queries.shape[0], chunk)
        ]
    )


def image_text_tie_counts(
    image: Tensor, text: Tensor, caption_image: Tensor, chunk: int = 4096
) -> tuple[TieCounts, TieCounts]:
    """(image->text, text->image) :class:`TieCounts`; arguments as :func:`image_text_retrieval`."""
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
    i2t = _chunked_counts(image, text, image_ids, owner, chunk)
    t2i = _chunked_counts(text, image, owner, image_ids, chunk)
    return i2t, t2i


def image_text_retrieval(
    image: Tensor,
    text: Tensor,
    caption_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 4096,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Image->text and text->image Recall@k in percent, ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}``.

    Args:
        image: [N, D] image embeddings (normalised, so the dot product is the cosine).
        text: [M, D] caption embeddings.
        caption_image: [M] index in ``image`` of each caption's image; every image needs at least one caption.
        ks: cut-offs.
        chunk: queries scored at a time (bounds memory to ``chunk x max(N, M)`` scores; no effect on values).
        ties: tie rule (module docstring); ``pessimistic`` by default (align's validation uses it).

    Image->text: a hit at k if any of the image's captions is among its top k captions; text->image: a hit if
    the caption's image is among its top k images. Scores are the embeddings' products in their own dtype.
    """
    check_ties(ties)
    i2t, t2i = image_text_tie_counts(image, text, caption_image, chunk)
    return i2t.recall(ks, ties, prefix="i2t_R@") | t2i.recall(ks, ties, prefix="t2i_R@")


def target_tie_counts(logits: ArrayLike, targets: ArrayLike) -> TieCounts:
    """:class:`TieCounts` of classification: the target class is the only positive of each sample."""
    s = _as_tensor(logits, torch.float64)
    _check_scores(s, "logits")
    t = _as_tensor(targets, torch.int64)
    if t.shape != (s.shape[0],):
        raise ValueError(f"targets must have shape ({s.shape[0]},), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got range [{int(t.min())}, {int(t.max())}]")
    positives = torch.zeros_like(s, dtype=torch.bool)
    positives[torch.arange(s.shape[0]), t] = True
    return _tie_counts(s, positives)


def target_ranks(logits: ArrayLike, targets: ArrayLike, ties: str = "pessimistic") -> Tensor:
    """0-based rank of the target class of each sample under ``ties`` (pessimistic: other classes scoring >= it)."""
    return target_tie_counts(logits, targets).ranks(ties)


def topk_accuracy(
    logits: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5), ties: str = "pessimistic"
) -> dict[str, float]:
    """Top-k accuracy in percent, ``{"top1": ..., "top5": ...}``; ``ties`` scores a target tied at the cut-off."""
    return target_tie_counts(logits, targets).recall(ks, check_ties(ties), prefix="top")


def mean_per_class_recall(correct: ArrayLike, targets: ArrayLike) -> float:
    """Mean over classes *that have samples* of the fraction of their samples classified correctly (percent).

    Args:
        correct: [N] bool, whether sample i was classified correctly (e.g. ``target_ranks(...) == 0``), or its
            credit in [0, 1] (``TieCounts.hits(1, "expected")``).
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
    logits: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5), ties: str = "pessimistic"
) -> dict[str, float]:
    """Top-k accuracies plus ``mean_per_class_recall`` (over classes present in ``targets``), under ``ties``."""
    return classification_from_counts(target_tie_counts(logits, targets), targets, ks, ties)


def classification_from_counts(
    counts: TieCounts, targets: ArrayLike, ks: Sequence[int] = (1, 5), ties: str = "pessimistic"
) -> dict[str, float]:
    """:func:`classification_metrics` of already computed :func:`target_tie_counts`."""
    metrics = counts.recall(ks, check_ties(ties), prefix="top")
    metrics["mean_per_class_recall"] = mean_per_class_recall(counts.hits(1, ties), targets)
    return metrics


def _four(names: str, *scores: ArrayLike) -> tuple[Tensor, ...]:
    out = tuple(_as_tensor(x, torch.float64) for x in scores)
    if not all(x.shape == out[0].shape for x in out) or out[0].ndim != 1 or out[0].numel() == 0:
        raise ValueError(f"the four {names} score vectors must be non-empty, 1-D and of equal length")
    return out


def winoground_scores(
    c0_i0: ArrayLike, c0_i1: ArrayLike, c1_i0: ArrayLike, c1_i1: ArrayLike
) -> dict[str, float]:
    """Winoground text, image and group scores in percent (Thrush et al., 2022, Sec. 3.3).

    ``cX_iY`` is the [N] similarity of caption X with image Y. Text score: each image prefers its own caption,
    ``c0_i0 > c1_i0 and c1_i1 > c0_i1``. Image score: each caption prefers its own image,
    ``c0_i0 > c0_i1 and c1_i1 > c1_i0``. Group: both. Strict inequalities, so ties are misses (as the official
    code and SAIL's).
    """
    a, b, c, d = _four("Winoground", c0_i0, c0_i1, c1_i0, c1_i1)
    text = (a > c) & (d > b)
    image = (a > b) & (d > c)
    return {
        "text": 100.0 * float(text.double().mean()),
        "image": 100.0 * float(image.double().mean()),
        "group": 100.0 * float((text & image).double().mean()),
    }


def winoground_tied(c0_i0: ArrayLike, c0_i1: ArrayLike, c1_i0: ArrayLike, c1_i1: ArrayLike) -> dict[str, int]:
    """Examples whose text / image / group outcome a tie decides: a miss only because a comparison tied."""
    a, b, c, d = _four("Winoground", c0_i0, c0_i1, c1_i0, c1_i1)
    text, text_if_won = (a > c) & (d > b), (a >= c) & (d >= b)
    image, image_if_won = (a > b) & (d > c), (a >= b) & (d >= c)
    return {
        "text": int((text_if_won & ~text).sum()),
        "image": int((image_if_won & ~image).sum()),
        "group": int((text_if_won & image_if_won & ~(text & image)).sum()),
    }


def mmvp_pair_correct(t0_i0: ArrayLike, t0_i1: ArrayLike, t1_i0: ArrayLike, t1_i1: ArrayLike) -> Tensor:
    """MMVP-VLM: [N] bool, whether each pair of statements is right (Tong et al., 2024, "Eyes Wide Shut?").

    Statement 0 belongs to image 0 and statement 1 to image 1; ``tX_iY`` is the similarity of statement X
    with image Y. A pair is right only if *both* statements pick their own image. The choice follows SAIL's and
    MMVP's ``evaluate_vlm.py``: a statement picks image 0 only when its softmax probability over the two images
    is > 0.5, i.e. when it is strictly more similar to image 0, and image 1 otherwise. So a tie picks image 1:
    statement 0 loses its tie, statement 1 wins it (``t0_i0 > t0_i1 and t1_i1 >= t1_i0``). The similarities are
    compared directly, so no rounding of the softmax makes near-ties equal.
    """
    a, b, c, d = _four("MMVP", t0_i0, t0_i1, t1_i0, t1_i1)
    return (a > b) & (d >= c)


def mmvp_pair_tied(t0_i0: ArrayLike, t0_i1: ArrayLike, t1_i0: ArrayLike, t1_i1: ArrayLike) -> Tensor:
    """[N] bool: pairs whose outcome a tie decides (right if every statement won its tie, wrong if it lost)."""
    a, b, c, d = _four("MMVP", t0_i0, t0_i1, t1_i0, t1_i1)
    return (a >= b) & (d >= c) & ~((a > b) & (d > c))


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


def first_candidate_tie_counts(scores: ArrayLike | Sequence[ArrayLike]) -> TieCounts:
    """:class:`TieCounts` of MMEB queries, whose positive is candidate 0 (``scores`` as :func:`precision_at_1`)."""
    rows = [scores] if isinstance(scores, (Tensor, np.ndarray)) else list(scores)
    if len(rows) == 1 and _as_tensor(rows[0], torch.float64).ndim == 2:
        rows = list(_as_tensor(rows[0], torch.float64))
    if not rows:
        raise ValueError("no queries to score")
    vectors = []
    for i, row in enumerate(rows):
        r = _as_tensor(row, torch.float64)
        if r.ndim != 1 or r.numel() < 2:
            raise ValueError(
                f"query {i}: need a 1-D score vector over >= 2 candidates, got shape {tuple(r.shape)}"
            )
        if torch.isnan(r).any():
            raise ValueError(f"query {i}: scores contain NaN")
        vectors.append(r)
    lengths = torch.tensor([len(v) for v in vectors])
    padded = torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True)
    valid = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    positives = torch.zeros_like(valid)
    positives[:, 0] = True
    return _tie_counts(padded, positives, valid)


def precision_at_1(scores: ArrayLike | Sequence[ArrayLike], ties: str = "pessimistic") -> float:
    """MMEB Precision@1 in percent: the positive is candidate 0 of each query.

    Args:
        scores: [Q, C] (or a list of Q 1-D score vectors when queries have different candidate counts), with
            the positive in column 0.
        ties: tie rule (module docstring). ``optimistic`` is VLM2Vec's (``np.argmax`` picks the first maximum,
            i.e. the positive); ``pessimistic`` (default here) needs the positive strictly best.
    """
    return 100.0 * float(first_candidate_tie_counts(scores).hits(1, check_ties(ties)).mean())


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
    ``exp(similarity / temperature)`` to the score of each neighbour's class. Training samples tied at the k-th
    similarity are taken in ``torch.topk``'s order, as DINO does (the tie rules apply to the class ranking).
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


def knn_tie_counts(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    query_features: ArrayLike,
    query_labels: ArrayLike,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
) -> dict[int, TieCounts]:
    """For each neighbour count k, the :func:`target_tie_counts` of the kNN class votes (see :func:`knn_accuracy`)."""
    train = _as_tensor(train_features, torch.float64)
    query = _as_tensor(query_features, torch.float64)
    train_y = _as_tensor(train_labels, torch.int64)
    query_y = _as_tensor(query_labels, torch.int64)
    if num_classes is None:
        num_classes = int(max(train_y.max(), query_y.max())) + 1
    return {
        k: target_tie_counts(knn_predict_scores(train, train_y, query, num_classes, k, temperature), query_y)
        for k in ks
    }


def knn_from_counts(counts: dict[int, TieCounts], ties: str = "pessimistic") -> dict[str, float]:
    """``{"k10_top1": ..., "k10_top5": ...}`` of :func:`knn_tie_counts`."""
    metrics: dict[str, float] = {}
    for k, c in counts.items():
        metrics |= c.recall((1, 5), check_ties(ties), prefix=f"k{k}_top")
    return metrics


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    query_features: ArrayLike,
    query_labels: ArrayLike,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Weighted kNN top-1 / top-5 accuracy (percent) for each k: ``{"k10_top1": ..., "k10_top5": ...}``.

    ``num_classes`` defaults to 1 + the largest label; a class no neighbour votes for scores 0, so a target
    without votes ties with every other unvoted class (``ties`` scores it; pessimistic: a miss).
    """
    counts = knn_tie_counts(
        train_features, train_labels, query_features, query_labels, ks, temperature, num_classes
    )
    return knn_from_counts(counts, ties)
