"""Benchmark tables kept as data: the 36 MMEB datasets, and published numbers of SAIL and CLIP.

Sources: VLM2Vec (Jiang et al., ICLR 2025, arXiv:2410.05160) for the MMEB datasets and splits; SAIL (Zhang et
al., 2024, github.com/lezhang7/SAIL) README table for SAIL-L and CLIP-L; VLM2Vec Table 2 (per meta-task, IND,
OOD, overall; the same rows as quoted in MegaPairs / MMRet, arXiv:2412.14475, Table 3) and the VLM2Vec README for
its Qwen2-VL models (overall only). Result keys are ``(task, dataset, metric)``, the same keys the evaluator
writes, so ``python -m evaluate report --references`` can put them beside new results; it does so only for results
of the benchmark's size (:data:`REFERENCE_BENCHMARKS`, :func:`reference_rows`): a folder named ``winoground`` with
6 examples is not Winoground. MMEB numbers stand beside a meta-task, IND, OOD or overall column only when the run
scored every dataset of that group in full (:func:`mmeb_incomplete`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
MMEB_EVAL_ROWS = 1000  # queries per MMEB-eval dataset (VLM2Vec samples 1,000 per dataset)


@dataclass(frozen=True)
class MMEBDataset:
    name: str  # subset name in TIGER-Lab/MMEB-eval
    meta_task: str  # one of META_TASKS
    split: str  # "IND" (its training split is in MMEB-train) or "OOD"


def _table(meta_task: str, ind: tuple[str, ...], ood: tuple[str, ...]) -> list[MMEBDataset]:
    return [MMEBDataset(n, meta_task, "IND") for n in ind] + [MMEBDataset(n, meta_task, "OOD") for n in ood]


MMEB_DATASETS: tuple[MMEBDataset, ...] = tuple(
    _table(
        "classification",
        ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"),
        ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"),
    )
    + _table(
        "vqa",
        ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"),
        ("ScienceQA", "VizWiz", "GQA", "TextVQA"),
    )
    + _table(
        "retrieval",
        (
            "VisDial",
            "CIRR",
            "VisualNews_t2i",
            "VisualNews_i2t",
            "MSCOCO_t2i",
            "MSCOCO_i2t",
            "NIGHTS",
            "WebQA",
        ),
        ("OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ"),
    )
    + _table("grounding", ("MSCOCO",), ("RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"))
)
MMEB_BY_NAME = {d.name: d for d in MMEB_DATASETS}

# MMEB-V2 (78 tasks) means per modality and overall, percent, by model: the VLM2Vec-V2 paper (Meng et al., 2025,
# arXiv:2507.04590), as quoted in this project's issue 17; the 58.0 overall of VLM2Vec-V2-2B is confirmed by
# the paper's abstract pages, the other cells are still to be checked against its Table 2. Shown beside a
# ``mmeb --version 2`` result only for the modalities run in full (evaluate.mmeb_v2.published_beside).
MMEB_V2_REFERENCES: dict[str, dict[str, float]] = {
    "VLM2Vec-V2-2B [VLM2Vec-V2 paper]": {"image": 64.9, "video": 34.6, "visdoc": 65.4, "overall": 58.0},
    "GME-7B [VLM2Vec-V2 paper]": {"overall": 57.8},
    "VLM2Vec-V1-7B [VLM2Vec-V2 paper]": {"overall": 52.3},
}

MMEB_METRICS = (*META_TASKS, "IND", "OOD", "overall")

# (task, dataset, metric) -> value, per reference model. Percentages.
REFERENCE_RESULTS: dict[str, dict[tuple[str, str, str], float]] = {
    "SAIL-L (NV2), 23M pairs [SAIL README]": {
        ("zeroshot", "imagenet", "top1"): 73.4,
        ("retrieval", "coco", "i2t_R@1"): 62.4,
        ("retrieval", "coco", "t2i_R@1"): 48.6,
        ("retrieval", "flickr30k", "i2t_R@1"): 87.6,
        ("retrieval", "flickr30k", "t2i_R@1"): 75.7,
        ("winoground", "winoground", "text"): 40.25,
        ("winoground", "winoground", "image"): 18.75,
        ("winoground", "winoground", "group"): 15.0,
        ("mmvp", "mmvp", "average"): 28.9,
    },
    "SAIL-L (GTE), 23M pairs [SAIL README]": {
        ("zeroshot", "imagenet", "top1"): 65.4,
        ("retrieval", "coco", "i2t_R@1"): 54.1,
        ("retrieval", "coco", "t2i_R@1"): 42.7,
        ("retrieval", "flickr30k", "i2t_R@1"): 80.8,
        ("retrieval", "flickr30k", "t2i_R@1"): 68.9,
        ("winoground", "winoground", "text"): 34.0,
        ("winoground", "winoground", "image"): 13.25,
        ("winoground", "winoground", "group"): 8.75,
        ("mmvp", "mmvp", "average"): 22.2,
    },
    "CLIP-L, LAION-400M [SAIL README]": {
        ("zeroshot", "imagenet", "top1"): 72.7,
        ("retrieval", "coco", "i2t_R@1"): 59.7,
        ("retrieval", "coco", "t2i_R@1"): 43.0,
        ("retrieval", "flickr30k", "i2t_R@1"): 87.6,
        ("retrieval", "flickr30k", "t2i_R@1"): 70.2,
        ("winoground", "winoground", "text"): 30.5,
        ("winoground", "winoground", "image"): 11.5,
        ("winoground", "winoground", "group"): 8.75,
        ("mmvp", "mmvp", "average"): 20.0,
    },
    **{
        label: dict(zip((("mmeb", "mmeb", m) for m in MMEB_METRICS), values, strict=True))
        for label, values in (
            ("VLM2Vec (Phi-3.5-V) [VLM2Vec Table 2]", (54.8, 54.9, 62.3, 79.5, 66.5, 52.0, 60.1)),
            (
                "VLM2Vec (LLaVA-1.6, low res.) [VLM2Vec Table 2]",
                (54.7, 50.3, 56.2, 64.0, 61.0, 47.5, 55.0),
            ),
            (
                "VLM2Vec (LLaVA-1.6, high res.) [VLM2Vec Table 2]",
                (61.2, 49.9, 67.4, 86.1, 67.5, 57.1, 62.9),
            ),
        )
    },
    "VLM2Vec-Qwen2VL-2B [VLM2Vec README]": {("mmeb", "mmeb", "overall"): 60.1},
    "VLM2Vec-Qwen2VL-7B [VLM2Vec README]": {("mmeb", "mmeb", "overall"): 65.8},
}


@dataclass(frozen=True)
class ReferenceBenchmark:
    """The data the published numbers were measured on, as the result files count it."""

    task: str
    dataset: str  # the dataset name result files carry
    size: dict[str, int] = field(hash=False)  # result ``counts`` the run must have
    description: str = ""


REFERENCE_BENCHMARKS: tuple[ReferenceBenchmark, ...] = (
    ReferenceBenchmark(
        "zeroshot",
        "imagenet",
        {"images": 50_000, "classes": 1000},
        "ImageNet-1k val: 50,000 images, 1000 classes",
    ),
    # captions are not compared: copies of the Karpathy test split hold 25,010 or (5 per image) 25,000
    ReferenceBenchmark("retrieval", "coco", {"images": 5000}, "COCO Karpathy 5k test: 5,000 images"),
    ReferenceBenchmark(
        "retrieval",
        "flickr30k",
        {"images": 1000, "captions": 5000},
        "Flickr30k Karpathy 1k test: 1,000 images, 5,000 captions",
    ),
    ReferenceBenchmark("winoground", "winoground", {"examples": 400}, "Winoground: 400 examples"),
    # MMVP-VLM (MMVP_VLM/Questions.csv): 9 patterns x 15 pairs, as MMVP's evaluate_vlm.py counts them
    # (categories[num_pairs // 15]); the 150 pairs / 300 images are MMVP's MLLM benchmark, another one
    ReferenceBenchmark(
        "mmvp", "mmvp", {"pairs": 135, "categories": 9}, "MMVP-VLM: 135 pairs (270 images), 9 patterns"
    ),
)
# MMEB: sized per column instead (a meta-task, IND, OOD or all 36 datasets, each with all its queries; see
# mmeb_incomplete), so no whole-result size here
REFERENCE_BENCHMARKS += (
    ReferenceBenchmark("mmeb", "mmeb", {}, "MMEB: every dataset of the column's group, 1,000 queries each"),
)
REFERENCE_BENCHMARK_BY_KEY = {(b.task, b.dataset): b for b in REFERENCE_BENCHMARKS}

Column = tuple[str, str, str]  # (task, dataset, metric)


class ResultLike(Protocol):
    """What the gating reads of a result (``evaluate.results.EvalResult`` has it)."""

    task: str
    dataset: dict
    counts: dict
    details: dict


def mmeb_group(metric: str) -> list[str]:
    """The MMEB datasets a metric averages: a meta-task's, IND's, OOD's or all 36 (``overall``)."""
    if metric == "overall":
        return [d.name for d in MMEB_DATASETS]
    return [d.name for d in MMEB_DATASETS if metric in (d.meta_task, d.split)]


def mmeb_incomplete(result: ResultLike, metric: str) -> str | None:
    """Why the published MMEB number of ``metric`` cannot stand beside this result (a dataset of its group not
    scored, or not in full), or None."""
    per_dataset = result.details.get("per_dataset", {})
    short = [n for n in mmeb_group(metric) if n not in per_dataset or result.counts.get(n) != MMEB_EVAL_ROWS]
    if not short:
        return None
    return (
        f"mmeb {metric}: {len(short)} of its {len(mmeb_group(metric))} datasets not scored on all "
        f"{MMEB_EVAL_ROWS:,} queries (e.g. {', '.join(short[:3])})"
    )


def size_mismatch(task: str, dataset: str, counts: Mapping[str, int]) -> str | None:
    """Why the published numbers of ``(task, dataset)`` cannot stand beside a result with these counts, or None
    (the result has the benchmark's size, or there is no reference benchmark of that name)."""
    benchmark = REFERENCE_BENCHMARK_BY_KEY.get((task, dataset))
    if benchmark is None:
        return None
    differ = [k for k, v in benchmark.size.items() if counts.get(k) != v]
    if not differ:
        return None
    has = ", ".join(f"{counts.get(k, 'no')} {k}" for k in differ)
    wants = ", ".join(f"{v} {k}" for k, v in benchmark.size.items())
    return f"{task} {dataset}: {has}, the published numbers are for {benchmark.description or wants}"


def _result_mismatch(result: ResultLike) -> str | None:
    return size_mismatch(result.task, str(result.dataset.get("name", "?")), result.counts)


def _mmeb_results(results: Sequence[ResultLike], column: Column) -> list[ResultLike]:
    return [r for r in results if r.task == "mmeb" and str(r.dataset.get("name", "?")) == column[1]]


def comparable_columns(results: Sequence[ResultLike], columns: Iterable[Column]) -> set[Column]:
    """The columns beside which published numbers may stand: every result in the column has the size of the
    benchmark the column names (MMEB: scored every dataset of the column's group in full)."""
    bad = {(r.task, str(r.dataset.get("name", "?"))) for r in results if _result_mismatch(r) is not None}
    allowed = set()
    for column in columns:
        if column[0] == "mmeb":
            matching = _mmeb_results(results, column)
            if matching and all(mmeb_incomplete(r, column[2]) is None for r in matching):
                allowed.add(column)
        elif (column[0], column[1]) not in bad:
            allowed.add(column)
    return allowed


def reference_rows(
    results: Sequence[ResultLike], columns: Iterable[Column]
) -> dict[str, dict[Column, float]]:
    """The reference rows of a report: for each reference model, its published numbers in ``columns`` whose
    results all have the benchmark's size (models with none of them are left out)."""
    allowed = comparable_columns(results, columns)
    rows: dict[str, dict[Column, float]] = {}
    for label, values in REFERENCE_RESULTS.items():
        shared = {key: value for key, value in values.items() if key in allowed}
        if shared:
            rows[label] = shared
    return rows


def withheld_references(results: Sequence[ResultLike], columns: Iterable[Column] = ()) -> list[str]:
    """One line per result whose name has published numbers that were left out because its size differs, and per
    MMEB column whose group the run did not score in full."""
    reasons = {reason for r in results if (reason := _result_mismatch(r)) is not None}
    published = {key[2] for values in REFERENCE_RESULTS.values() for key in values if key[0] == "mmeb"}
    for column in columns:
        if column[0] == "mmeb" and column[2] in published:
            for result in _mmeb_results(results, column):
                if (reason := mmeb_incomplete(result, column[2])) is not None:
                    reasons.add(reason)
    return sorted(reasons)
