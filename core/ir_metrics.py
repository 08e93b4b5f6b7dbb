"""Ranking metrics with graded relevance (NDCG@k, hit@k, MRR, MAP) computed by pytrec_eval (trec_eval).

trec_eval's ``ndcg_cut`` uses the linear gain (the relevance grade itself) and takes the ideal ranking from the
judged documents, which is VLM2Vec-V2's ``ndcg_linear@k``; its ``success`` is hit@k, ``recip_rank`` MRR and
``map`` the mean average precision over the ranked list given. A grade <= 0 is not relevant. Documents with equal
scores are ordered by trec_eval's rule (descending document id), so a tie is decided, not credited in part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]  # query id -> document id -> relevance grade
Run = Mapping[str, Mapping[str, float]]  # query id -> document id -> score


def _measures(ks: Sequence[int]) -> set[str]:
    cuts = ",".join(str(k) for k in sorted(set(ks)))
    return {f"ndcg_cut.{cuts}", f"success.{cuts}", "recip_rank", "map"}


def ranking_metrics(qrels: Qrels, run: Run, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Means over the queries of ``qrels`` (each with at least one relevant document) of ``ndcg@k``, ``hit@k``,
    ``mrr`` and ``map``, as fractions in [0, 1]. A query missing from ``run`` scores 0."""
    import pytrec_eval

    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    answerable = [q for q, docs in judged.items() if any(g > 0 for g in docs.values())]
    if not answerable:
        raise ValueError("no query has a relevant document (grade > 0)")
    evaluator = pytrec_eval.RelevanceEvaluator({q: judged[q] for q in answerable}, _measures(ks))
    scored = evaluator.evaluate({q: {d: float(s) for d, s in run.get(q, {}).items()} for q in answerable})
    names = {f"ndcg@{k}": f"ndcg_cut_{k}" for k in ks} | {f"hit@{k}": f"success_{k}" for k in ks}
    names |= {"mrr": "recip_rank", "map": "map"}
    return {
        name: float(np.mean([scored[q][measure] if q in scored else 0.0 for q in answerable]))
        for name, measure in names.items()
    }
