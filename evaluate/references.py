"""Benchmark tables kept as data: the 36 MMEB datasets, and published numbers of SAIL and CLIP.

Sources: VLM2Vec (Jiang et al., ICLR 2025, arXiv:2410.05160) for the MMEB datasets and splits; SAIL (Zhang et
al., 2024, github.com/lezhang7/SAIL) README table for SAIL-L and CLIP-L. Published MMEB scores are not kept here
until they are checked against the paper's table. Result keys are ``(task, dataset, metric)``, the same keys the
evaluator writes, so ``python -m evaluate report --references`` can put them beside new results.
"""

from __future__ import annotations

from dataclasses import dataclass

META_TASKS = ("classification", "vqa", "retrieval", "grounding")


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
}
