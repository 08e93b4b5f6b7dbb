"""The MTEB / MIEB wrapper on local tasks built from COCO-MINI (hub tasks cannot be fetched here), run through
``mteb.evaluate``: image-text retrieval scores equal our evaluator's recall, a text retrieval task equals a hand
computation, and a VLM2Vec model receives its rows (image, text, instruction) as the evaluator gives them."""

from __future__ import annotations

import math

import datasets
import mteb
import numpy as np
import pytest
import torch
from integration_helpers import coco_slice, random_head_checkpoint
from mteb._create_dataloaders import create_dataloader
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType
from vlm2vec_helpers import color_image, save_tiny_qwen2_vl

from core.protocol import EmbedInput
from evaluate import tasks
from evaluate.cache import FeatureCache
from evaluate.datasets import load_retrieval
from evaluate.models import load_model
from evaluate.mteb_model import MTEBEncoder

pytestmark = pytest.mark.slow
N_IMAGES = 10


def local_retrieval_task(name: str, category: str, modalities: list[str], split: dict) -> AbsTaskRetrieval:
    """An mteb retrieval task whose data is given here (``load_data`` fetches nothing)."""
    metadata = TaskMetadata(
        name=name,
        description="a local slice of COCO-MINI val2017",
        dataset={"path": "local/coco-mini", "revision": "local"},
        type="Any2AnyRetrieval" if "image" in modalities else "Retrieval",
        category=category,
        modalities=modalities,
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )

    def load_data(self, num_proc=None, **kwargs) -> None:
        self.dataset = {"default": {"test": {**split, "top_ranked": None}}}
        self.data_loaded = True

    return type(name, (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})()


def _images(ids: list[str], paths: list) -> datasets.Dataset:
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    return datasets.Dataset.from_dict({"id": ids, "image": [str(p) for p in paths]}, features=features)


def _texts(ids: list[str], texts: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": ids, "text": texts})


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    annotations, root = coco_slice(tmp_path_factory.mktemp("coco"), N_IMAGES)
    return load_retrieval(annotations, image_root=root)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    checkpoint = random_head_checkpoint(tmp_path_factory.mktemp("ckpt"))
    return MTEBEncoder.from_spec(str(checkpoint))


def _scores(result) -> dict:
    (task_result,) = result.task_results
    return task_result.scores["test"][0]


def test_image_text_retrieval_equals_our_evaluator(encoder, coco):
    image_ids = [f"img{i}" for i in range(len(coco.images))]
    caption_ids = [f"cap{j}" for j in range(len(coco.captions))]
    images, captions = _images(image_ids, coco.images), _texts(caption_ids, coco.captions)
    t2i = local_retrieval_task("LocalCocoT2I", "t2i", ["text", "image"], {
        "queries": captions, "corpus": images,
        "relevant_docs": {caption_ids[j]: {image_ids[i]: 1} for j, i in enumerate(coco.caption_image)},
    })  # fmt: skip
    owned: dict[str, dict[str, int]] = {image_id: {} for image_id in image_ids}
    for j, i in enumerate(coco.caption_image):
        owned[image_ids[i]][caption_ids[j]] = 1
    i2t = local_retrieval_task("LocalCocoI2T", "i2t", ["image", "text"], {
        "queries": images, "corpus": captions, "relevant_docs": owned,
    })  # fmt: skip
    result = mteb.evaluate(encoder, [t2i, i2t], cache=None, show_progress_bar=False)
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}

    ours = tasks.retrieval(encoder.model, coco, tasks.EncodeSettings(FeatureCache(None, "mteb")))
    assert all(count == 0 for count in ours.ties["tied"].values())
    for k in (1, 5, 10):  # text->image: one relevant image, so mteb's recall is our hit rate
        assert 100 * scores["LocalCocoT2I"][f"recall_at_{k}"] == pytest.approx(
            ours.metrics[f"t2i_R@{k}"], abs=1e-3
        )
        # image->text: ours is "any of its captions in the top k", mteb's hit rate
        assert 100 * scores["LocalCocoI2T"][f"hit_rate_at_{k}"] == pytest.approx(
            ours.metrics[f"i2t_R@{k}"], abs=1e-3
        )
    assert scores["LocalCocoT2I"]["recall_at_10"] > 0


def _hand_retrieval(
    queries: np.ndarray, corpus: np.ndarray, relevant: list[set[int]], k: int
) -> dict[str, float]:
    """Recall@k and nDCG@k (binary gains) from a dense similarity matrix, without ties."""
    order = np.argsort(-(queries @ corpus.T), axis=1)[:, :k]
    recall, ndcg = [], []
    for row, rel in zip(order, relevant, strict=True):
        hits = [int(doc) in rel for doc in row]
        recall.append(sum(hits) / len(rel))
        dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
        ndcg.append(dcg / sum(1 / math.log2(rank + 2) for rank in range(min(k, len(rel)))))
    return {f"recall_at_{k}": float(np.mean(recall)), f"ndcg_at_{k}": float(np.mean(ndcg))}


def test_text_retrieval_equals_a_hand_computation(encoder, coco):
    """Queries: each image's first caption; corpus: all other captions; relevant: the same image's others."""
    first = {}
    for j, i in enumerate(coco.caption_image):
        first.setdefault(i, j)
    query_rows = sorted(first.values())
    corpus_rows = [j for j in range(len(coco.captions)) if j not in set(query_rows)]
    relevant = {
        f"q{j}": {f"d{c}": 1 for c in corpus_rows if coco.caption_image[c] == coco.caption_image[j]}
        for j in query_rows
    }
    task = local_retrieval_task("LocalCocoCaptions", "t2t", ["text"], {
        "queries": _texts([f"q{j}" for j in query_rows], [coco.captions[j] for j in query_rows]),
        "corpus": _texts([f"d{c}" for c in corpus_rows], [coco.captions[c] for c in corpus_rows]),
        "relevant_docs": relevant,
    })  # fmt: skip
    scores = _scores(mteb.evaluate(encoder, task, cache=None, show_progress_bar=False))

    embedded = encoder.model.encode_text(list(coco.captions)).double().numpy()
    position = {c: n for n, c in enumerate(corpus_rows)}
    rel_sets = [{position[int(d[1:])] for d in relevant[f"q{j}"]} for j in query_rows]
    for k in (1, 5, 10):
        hand = _hand_retrieval(embedded[query_rows], embedded[corpus_rows], rel_sets, k)
        for name, value in hand.items():
            assert scores[name] == pytest.approx(value, abs=1e-4), name
    assert scores["main_score"] == scores["ndcg_at_10"] and scores["recall_at_10"] > 0


def test_vlm2vec_model_gets_images_texts_and_instructions(tmp_path):
    """Through mteb's own DataLoaders: image queries with the query instruction, text documents without."""
    model = load_model(str(save_tiny_qwen2_vl(tmp_path / "qwen2vl")))
    instructions = {"query": "Find an image caption describing the given image."}
    encoder = MTEBEncoder(model, name="local/tiny-vlm2vec", revision="r1", instructions=instructions)
    assert encoder.mteb_model_meta.use_instructions and encoder.mteb_model_meta.modalities == [
        "image",
        "text",
    ]
    images = [color_image(rgb) for rgb in ((255, 0, 0), (0, 0, 255), (0, 200, 0))]  # PNG round trips exactly
    texts = ["a red square", "a blue square", "green"]
    image_features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    task = local_retrieval_task("LocalColoursI2T", "i2t", ["image", "text"], {
        "queries": datasets.Dataset.from_dict({"id": ["a", "b", "c"], "image": images}, features=image_features),
        "corpus": _texts(["x", "y", "z"], texts),
        "relevant_docs": {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}},
    })  # fmt: skip
    task.load_data()
    split = task.dataset["default"]["test"]
    expected = {
        PromptType.query: model.encode(
            [EmbedInput(image=im, instruction=instructions["query"]) for im in images]
        ),
        PromptType.document: model.encode([EmbedInput(text=text) for text in texts]),
    }
    for prompt_type, rows in ((PromptType.query, split["queries"]), (PromptType.document, split["corpus"])):
        loader = create_dataloader(rows, task_metadata=task.metadata, prompt_type=prompt_type, batch_size=2)
        embedded = encoder.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                                  prompt_type=prompt_type, show_progress_bar=False)  # fmt: skip
        reference = torch.nn.functional.normalize(expected[prompt_type].float(), dim=-1)
        torch.testing.assert_close(torch.from_numpy(embedded), reference, atol=1e-5, rtol=0)
