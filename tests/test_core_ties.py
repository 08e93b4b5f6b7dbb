"""The three tie rules of core/metrics.py on constructed score matrices: constant scores, integer grids and
duplicated class names, against hand-computed values and a brute-force enumeration of every tie-break order; on
tie-free scores the rules agree with each other and with the reference codes' own definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from evaluate_helpers import FakeModel

from core import metrics as M

RULES = ("optimistic", "pessimistic", "expected")


# ----- brute force: every order of the candidates as a secondary key --------------------------------------------
def _hit(row: list[float], positives: set[int], k: int, order: tuple[int, ...]) -> bool:
    """Whether some positive is in the top k when ties are broken by ``order`` (a permutation of candidates)."""
    position = {c: i for i, c in enumerate(order)}
    ranked = sorted(range(len(row)), key=lambda c: (-row[c], position[c]))
    return any(c in positives for c in ranked[:k])


def _brute_force(row: list[float], positives: set[int], k: int) -> dict[str, float]:
    """Hit at k under each rule: optimistic = best tie-break order, pessimistic = worst, expected = the mean."""
    hits = [_hit(row, positives, k, order) for order in itertools.permutations(range(len(row)))]
    return {
        "optimistic": float(max(hits)),
        "pessimistic": float(min(hits)),
        "expected": sum(hits) / len(hits),
    }


def _expected_by_formula(n: int, m: int, s: int) -> float:
    """1 - C(k - m, s) / C(k, s) for k = n + m tied candidates (m positives) and s slots above the cut-off."""
    if s <= 0:
        return 0.0
    return 1.0 - math.comb(n, s) / math.comb(n + m, s)  # math.comb(n, s) == 0 when s > n


# ----- the formula ---------------------------------------------------------------------------------------------
def _tie_orders(n: int, m: int, s: int) -> list[bool]:
    """For every order of k = n + m tied candidates (items < m are the positives): is a positive among the
    first s?"""
    return [any(c < m for c in order[: max(s, 0)]) for order in itertools.permutations(range(n + m))]


@pytest.mark.parametrize("above", [0, 1, 2])
def test_multi_positive_formula_equals_brute_force_over_all_tie_orders(above):
    # above negatives at 2.0, then n negatives and m positives tied at 1.0, then one negative and one positive at 0
    for n, m in itertools.product(range(4), range(1, 4)):
        row = [2.0] * above + [1.0] * n + [1.0] * m + [0.0, 0.0]
        positives = set(range(above + n, above + n + m)) | {len(row) - 1}
        mask = torch.zeros(1, len(row), dtype=torch.bool)
        mask[0, list(positives)] = True
        counts = M.tie_counts(torch.tensor([row]), mask)
        got = (int(counts.above[0]), int(counts.tied_negatives[0]), int(counts.tied_positives[0]))
        assert got == (above, n, m)
        for k in range(1, above + n + m + 1):
            orders = [float(hit) for hit in _tie_orders(n, m, k - above)]
            brute = {
                "optimistic": max(orders),
                "pessimistic": min(orders),
                "expected": sum(orders) / len(orders),
            }
            assert brute["expected"] == pytest.approx(_expected_by_formula(n, m, k - above), abs=1e-12)
            for rule in RULES:
                hit = float(counts.hits(k, rule)[0])
                assert hit == pytest.approx(brute[rule], abs=1e-12), (n, m, k, rule)
            assert bool(counts.tied(k)[0]) == (brute["optimistic"] != brute["pessimistic"])


def test_hand_computed_values_one_and_several_positives():
    # one positive tied with 3 negatives, 2 slots: s / k = 2 / 4; 2 positives tied with 2 negatives, 1 slot: 1/2
    # 2 positives tied with 3 negatives, 2 slots: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3, 0.9], [0.7, 0.7, 0.7, 0.7, 0.7]])
    positives = torch.tensor(
        [
            [True, False, False, False, False],
            [True, True, False, False, False],
            [True, True, False, False, False],
        ]
    )
    counts = M.tie_counts(scores, positives)
    assert counts.hits(2, "expected")[0] == pytest.approx(0.5)
    # query 1: one negative (0.9) above, so 1 slot left at k = 2 for the 4 tied (2 positives): 1 - C(2,1)/C(4,1)
    assert counts.hits(2, "expected")[1] == pytest.approx(0.5)
    assert counts.hits(2, "expected")[2] == pytest.approx(0.7)
    assert counts.hits(2, "optimistic").tolist() == [1.0, 1.0, 1.0]
    assert counts.hits(2, "pessimistic").tolist() == [0.0, 0.0, 0.0]
    # k = 4: every tied negative fits above the cut-off
    assert counts.hits(4, "pessimistic").tolist() == [1.0, 1.0, 1.0]
    got = M.retrieval_recall(scores, positives, ks=(1, 2, 4), ties="expected")
    # R@1: 1/4, 0 (no slot left), 1 - C(3,1)/C(5,1) = 2/5
    assert got == pytest.approx({"R@1": 100 * (1 / 4 + 0 + 2 / 5) / 3, "R@2": 100 * 1.7 / 3, "R@4": 100.0})
    assert counts.tied_counts((1, 2, 4)) == {"R@1": 2, "R@2": 3, "R@4": 0}


def test_expected_rank_is_the_mean_rank_over_tie_orders():
    row, positives = [1.0, 1.0, 1.0, 1.0, 2.0], {0, 1}  # 1 negative above, 2 negatives tied with 2 positives
    mask = torch.tensor([[c in positives for c in range(5)]])
    ranks = []
    for order in itertools.permutations(range(5)):
        position = {c: i for i, c in enumerate(order)}
        ranked = sorted(range(5), key=lambda c: (-row[c], position[c]))
        ranks.append(min(ranked.index(c) for c in positives))  # negatives above the first positive
    assert float(M.positive_ranks(torch.tensor([row]), mask, ties="expected")[0]) == pytest.approx(
        np.mean(ranks)
    )
    assert M.positive_ranks(torch.tensor([row]), mask, ties="optimistic").tolist() == [min(ranks)] == [1]
    assert M.positive_ranks(torch.tensor([row]), mask, ties="pessimistic").tolist() == [max(ranks)] == [3]


# ----- constructed matrices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("positives_per_query", [1, 2, 3])
def test_constant_scores(positives_per_query):
    q, c, m = 4, 7, positives_per_query
    positives = torch.zeros(q, c, dtype=torch.bool)
    for i in range(q):
        positives[i, [(i + j) % c for j in range(m)]] = True
    ks = (1, 2, 5, 7)
    scores = torch.zeros(q, c)
    assert M.retrieval_recall(scores, positives, ks, ties="optimistic") == {f"R@{k}": 100.0 for k in ks}
    # pessimistic: a hit only once every tied negative fits above the cut-off (k > c - m)
    assert M.retrieval_recall(scores, positives, ks, ties="pessimistic") == {
        f"R@{k}": 100.0 * (k > c - m) for k in ks
    }
    expected = {f"R@{k}": 100.0 * _expected_by_formula(c - m, m, k) for k in ks}
    assert M.retrieval_recall(scores, positives, ks, ties="expected") == pytest.approx(expected)
    if m == 1:  # s / k with one positive
        assert expected == pytest.approx({f"R@{k}": 100.0 * k / c for k in ks})
    assert M.tie_counts(scores, positives).tied_counts(ks) == {f"R@{k}": q * (k <= c - m) for k in ks}
    # classification and MMEB with constant scores
    targets = torch.arange(q)
    assert M.topk_accuracy(scores, targets, (1, 5), ties="expected") == pytest.approx(
        {"top1": 100 / c, "top5": 500 / c}
    )
    assert M.topk_accuracy(scores, targets, (1, 5), ties="optimistic") == {"top1": 100.0, "top5": 100.0}
    assert M.topk_accuracy(scores, targets, (1, 5), ties="pessimistic") == {"top1": 0.0, "top5": 0.0}
    assert M.precision_at_1(scores, ties="expected") == pytest.approx(100 / c)
    assert M.precision_at_1(scores, ties="optimistic") == 100.0
    assert M.precision_at_1(scores, ties="pessimistic") == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_grids_equal_brute_force_for_every_rule(seed):
    generator = torch.Generator().manual_seed(seed)
    q, c = 5, 6
    scores = torch.randint(0, 3, (q, c), generator=generator).double()  # values 0, 1, 2: ties everywhere
    positives = torch.rand(q, c, generator=generator) < 0.3
    positives[torch.arange(q), torch.randint(0, c, (q,), generator=generator)] = True
    ks = (1, 2, 3, 5)
    rows = scores.tolist()
    sets = [set(p.nonzero().flatten().tolist()) for p in positives]
    brute = [{k: _brute_force(row, pos, k) for k in ks} for row, pos in zip(rows, sets, strict=True)]
    counts = M.tie_counts(scores, positives)
    for rule in RULES:
        want = {f"R@{k}": 100.0 * sum(b[k][rule] for b in brute) / q for k in ks}
        assert M.retrieval_recall(scores, positives, ks, ties=rule) == pytest.approx(want)
        assert counts.recall(ks, rule) == pytest.approx(want)
    tied = {f"R@{k}": sum(b[k]["optimistic"] != b[k]["pessimistic"] for b in brute) for k in ks}
    assert counts.tied_counts(ks) == tied
    assert sum(tied.values()) > 0  # the grid does exercise ties


def test_image_text_retrieval_on_integer_embeddings_equals_dense_counts_for_every_chunk():
    generator = torch.Generator().manual_seed(3)
    image = torch.randint(-1, 2, (6, 3), generator=generator).float()
    text = torch.randint(-1, 2, (10, 3), generator=generator).float()
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 1])
    i2t_mask = torch.arange(6)[:, None] == owner[None, :]
    for rule in RULES:
        dense = M.retrieval_recall(image @ text.T, i2t_mask, (1, 3), ties=rule)
        dense_t2i = M.retrieval_recall(text @ image.T, i2t_mask.T, (1, 3), ties=rule)
        want = {f"i2t_{k}": v for k, v in dense.items()} | {f"t2i_{k}": v for k, v in dense_t2i.items()}
        for chunk in (1, 4, 4096):
            got = M.image_text_retrieval(image, text, owner, ks=(1, 3), chunk=chunk, ties=rule)
            assert got == pytest.approx(want)
    # the default stays pessimistic (align/train.py's validation calls it without ties)
    assert M.image_text_retrieval(image, text, owner, ks=(1, 3)) == M.image_text_retrieval(
        image, text, owner, ks=(1, 3), ties="pessimistic"
    )


def test_duplicated_class_names_give_identical_weights_and_tie():
    from evaluate import tasks
    from evaluate.cache import FeatureCache

    model = FakeModel({}, {"missile": [1.0, 0.2, 0.0], "tench": [0.0, 1.0, 0.0], "goose": [0.1, 0.0, 1.0]})
    classnames = ["tench", "missile", "goose", "missile"]  # ImageNet has 'missile' at 657 and 744
    weights = tasks.zeroshot_classifier(
        model, classnames, ["a photo of a {}."], tasks.EncodeSettings(FeatureCache(None, "x"))
    )
    assert torch.equal(weights[1], weights[3])
    images = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.2, 0.0], [1.0, 0.25, 0.0], [0.0, 1.0, 0.1]]), dim=-1
    )
    logits = images @ weights.T
    targets = torch.tensor([1, 3, 0])  # two 'missile' images, labelled with either copy, and a tench
    # both missile images: top-1 tied between classes 1 and 3 (1 of 2 slots), top-2 both in: a hit
    assert M.topk_accuracy(logits, targets, (1, 2), ties="optimistic") == {"top1": 100.0, "top2": 100.0}
    assert M.topk_accuracy(logits, targets, (1, 2), ties="pessimistic") == pytest.approx(
        {"top1": 100 / 3, "top2": 100.0}
    )
    assert M.topk_accuracy(logits, targets, (1, 2), ties="expected") == pytest.approx(
        {"top1": 200 / 3, "top2": 100.0}
    )
    assert M.target_tie_counts(logits, targets).tied_counts((1, 2), prefix="top") == {"top1": 2, "top2": 0}
    # mean per-class recall uses each image's expected top-1 credit: class 1: 1/2, class 3: 1/2, class 0: 1
    got = M.classification_metrics(logits, targets, (1,), ties="expected")
    assert got["mean_per_class_recall"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)


def test_knn_target_without_votes_ties_with_the_other_unvoted_classes():
    # 7 classes, both neighbours of class 0: the target (class 2) ties at 0 with classes 1..6 (6 tied, 1 above)
    train, query = torch.tensor([[1.0, 0.0], [0.9, 0.1]]), torch.tensor([[1.0, 0.0]])
    args = (train, torch.tensor([0, 0]), query, torch.tensor([2]), (2,))
    assert M.knn_accuracy(*args, num_classes=7, ties="pessimistic") == {"k2_top1": 0.0, "k2_top5": 0.0}
    assert M.knn_accuracy(*args, num_classes=7, ties="optimistic") == {"k2_top1": 0.0, "k2_top5": 100.0}
    assert M.knn_accuracy(*args, num_classes=7, ties="expected") == pytest.approx(
        {"k2_top1": 0.0, "k2_top5": 100 * 4 / 6}
    )
    assert M.knn_tie_counts(*args, num_classes=7)[2].tied_counts((1, 5), prefix="top") == {
        "top1": 0,
        "top5": 1,
    }


# ----- the reference rules -------------------------------------------------------------------------------------
def test_mmeb_optimistic_is_vlm2vecs_argmax_with_the_positive_first():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 3, (40, 5), generator=generator).double()
    argmax_hits = (np.argmax(scores.numpy(), axis=1) == 0).mean() * 100  # np.argmax: the first maximum
    assert M.precision_at_1(scores, ties="optimistic") == pytest.approx(argmax_hits)
    strict = (scores[:, 0] > scores[:, 1:].amax(dim=1)).double().mean() * 100
    assert M.precision_at_1(scores, ties="pessimistic") == pytest.approx(float(strict))
    ragged = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0, 0.0]), torch.tensor([3.0, 3.0, 3.0, 1.0])]
    assert M.precision_at_1(ragged, ties="optimistic") == pytest.approx(200 / 3)
    assert M.precision_at_1(ragged, ties="expected") == pytest.approx(100 * (1 / 2 + 0 + 1 / 3) / 3)
    counts = M.first_candidate_tie_counts(ragged)
    assert counts.tied_negatives.tolist() == [1, 1, 2] and counts.above.tolist() == [0, 1, 0]


def _sail_mmvp(t0_i0: float, t0_i1: float, t1_i0: float, t1_i1: float) -> bool:
    """SAIL's / MMVP's evaluate_vlm.py rule, restated: each statement's softmax over the two images (logit scale
    100); image 1 of the pair is chosen only when its probability is > 0.5; both statements must be right."""
    p0 = torch.softmax(100 * torch.tensor([t0_i0, t0_i1]), 0)[0]
    p1 = torch.softmax(100 * torch.tensor([t1_i0, t1_i1]), 0)[0]
    return bool(p0 > 0.5) and not bool(p1 > 0.5)


def test_mmvp_follows_sails_probability_rule_including_ties():
    grid = list(itertools.product([0.0, 0.5, 1.0], repeat=4))  # every tie pattern
    a, b, c, d = (torch.tensor(v) for v in zip(*grid, strict=True))
    assert M.mmvp_pair_correct(a, b, c, d).tolist() == [_sail_mmvp(*g) for g in grid]
    # statement 0 loses its tie, statement 1 wins it
    assert M.mmvp_pair_correct([0.5], [0.5], [0.1], [0.9]).tolist() == [False]
    assert M.mmvp_pair_correct([0.9], [0.1], [0.5], [0.5]).tolist() == [True]
    tied = M.mmvp_pair_tied(a, b, c, d)
    won = (a >= b) & (d >= c)
    lost = (a > b) & (d > c)
    assert tied.tolist() == (won & ~lost).tolist()


def test_winoground_is_strict_and_counts_tied_examples():
    # ex0 right; ex1 text lost only to a tie (c0_i0 == c1_i0); ex2 all tied; ex3 wrong with a tie elsewhere
    c0_i0, c0_i1, c1_i0, c1_i1 = (
        [1.0, 0.6, 0.5, 0.1],
        [0.0, 0.2, 0.5, 0.9],
        [0.0, 0.6, 0.5, 0.9],
        [1.0, 0.8, 0.5, 0.9],
    )
    assert M.winoground_scores(c0_i0, c0_i1, c1_i0, c1_i1) == {"text": 25.0, "image": 50.0, "group": 25.0}
    assert M.winoground_tied(c0_i0, c0_i1, c1_i0, c1_i1) == {"text": 2, "image": 1, "group": 2}


def _clip_benchmark_recall(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """CLIP_benchmark's image-text recall, restated: torch.topk's k candidates, a hit if any is a positive."""
    top = scores.topk(k, dim=1).indices
    return 100.0 * float(positives.gather(1, top).any(dim=1).double().mean())


def test_tie_free_scores_give_the_same_values_under_every_rule_and_equal_the_references():
    generator = torch.Generator().manual_seed(5)
    scores = torch.rand(30, 12, generator=generator, dtype=torch.float64)
    positives = torch.rand(30, 12, generator=generator) < 0.2
    positives[torch.arange(30), torch.randint(0, 12, (30,), generator=generator)] = True
    ks = (1, 3, 5)
    reference = {f"R@{k}": _clip_benchmark_recall(scores, positives, k) for k in ks}
    targets = torch.randint(0, 12, (30,), generator=generator)
    top = scores.topk(5, dim=1).indices  # CLIP_benchmark's accuracy(): the target among topk's first k
    top_reference = {
        f"top{k}": 100.0 * float((top[:, :k] == targets[:, None]).any(1).double().mean()) for k in (1, 5)
    }
    argmax = 100.0 * float((scores.argmax(dim=1) == 0).double().mean())
    c = M.tie_counts(scores, positives)
    assert c.tied_counts(ks) == {f"R@{k}": 0 for k in ks}
    for rule in RULES:
        assert M.retrieval_recall(scores, positives, ks, ties=rule) == pytest.approx(reference)
        assert M.topk_accuracy(scores, targets, (1, 5), ties=rule) == pytest.approx(top_reference)
        assert M.precision_at_1(scores, ties=rule) == pytest.approx(argmax)
        assert torch.equal(
            M.positive_ranks(scores, positives, ties=rule).double(), c.ranks("pessimistic").double()
        )
    image = torch.nn.functional.normalize(torch.randn(8, 4, generator=generator, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(16, 4, generator=generator, dtype=torch.float64), dim=-1)
    owner = torch.arange(16) % 8
    values = [M.image_text_retrieval(image, text, owner, ties=rule) for rule in RULES]
    assert values[0] == values[1] == pytest.approx(values[2])


def test_bad_rules_and_cut_offs_are_rejected():
    with pytest.raises(ValueError, match="ties must be one of optimistic, pessimistic, expected"):
        M.retrieval_recall(torch.zeros(1, 2), torch.tensor([[True, False]]), ties="random")
    with pytest.raises(ValueError, match="ties must be one of"):
        M.precision_at_1(torch.zeros(1, 2), ties="first")
    with pytest.raises(ValueError, match="cut-offs must be >= 1"):
        M.tie_counts(torch.zeros(1, 2), torch.tensor([[True, False]])).hits(0, "expected")


# ----- every task records its rule and its tied queries -------------------------------------------------------
def _enc():
    from evaluate import tasks
    from evaluate.cache import FeatureCache

    return tasks.EncodeSettings(FeatureCache(None, "ties"))


def test_winoground_and_mmvp_record_their_fixed_rules(tmp_path):
    from evaluate_helpers import PALETTE, save_image, solid_image

    from evaluate import tasks
    from evaluate.datasets import MMVPData, WinogroundData

    red, green, blue = PALETTE[:3]
    model = FakeModel(
        {red: [1, 0], green: [0, 1], blue: [1, 1]}, {"left": [1, 0], "right": [0, 1], "both": [1, 1]}
    )
    # example 0 right; example 1: image 1 (blue) scores both captions equally -> text and group lost to a tie
    wino = WinogroundData(
        ids=[0, 1],
        captions_0=["left", "left"],
        captions_1=["right", "right"],
        images_0=[solid_image(red), solid_image(red)],
        images_1=[solid_image(green), solid_image(blue)],
    )
    result = tasks.winoground(model, wino, _enc())
    assert result.metrics == {"text": 50.0, "image": 100.0, "group": 50.0}
    assert result.ties == {"rule": "strict", "tied": {"text": 1, "image": 0, "group": 1}}
    red_path, green_path = save_image(tmp_path / "red.png", red), save_image(tmp_path / "green.png", green)
    # pair 0 right; pair 1: statement 1 ("both") is as similar to red as to green -> picks image 1: right (SAIL);
    # pair 2: statement 0 ("both") ties the same way -> picks image 1: wrong. Both pairs were decided by a tie.
    mmvp = MMVPData(
        categories=["Color", "Color", "Texts"],
        statements_0=["left", "left", "both"],
        statements_1=["right", "both", "right"],
        images_0=[red_path] * 3,
        images_1=[green_path] * 3,
    )
    result = tasks.mmvp(model, mmvp, _enc())
    assert result.metrics == pytest.approx({"Color": 100.0, "Texts": 0.0, "average": 50.0})
    assert result.ties == {"rule": "sail", "tied": {"Color": 1, "Texts": 1, "average": 2}}


@pytest.mark.parametrize(
    ("rule", "p_at_1"), [("optimistic", 100.0), ("pessimistic", 50.0), ("expected", 75.0)]
)
def test_mmeb_and_knn_tasks_record_the_rule_they_were_given(tmp_path, rule, p_at_1):
    from evaluate_helpers import PALETTE, save_image

    from evaluate import tasks
    from evaluate.datasets import ImageFolderData, MMEBSubset

    model = FakeModel({}, {"query a": [1, 0], "query b": [0, 1], "x": [1, 0], "y": [0, 1], "z": [0, 1]})
    subset = MMEBSubset(
        name="CIRR",
        query_texts=["query a", "query b"],
        query_images=[None, None],
        target_texts=[["x", "y"], ["y", "z", "x"]],  # query b: positive y ties with negative z
        target_images=[[None, None], [None, None, None]],
    )
    result = tasks.mmeb(model, [subset], _enc(), ties=rule)
    assert result.details["per_dataset"] == {"CIRR": pytest.approx(p_at_1)}  # query a right, b tied
    assert result.ties == {"rule": rule, "tied": {"CIRR": 1}}
    assert tasks.mmeb(model, [subset], _enc()).ties["rule"] == "optimistic"  # VLM2Vec's default

    red, green = PALETTE[:2]
    classes = list("abcdefgh")
    train = ImageFolderData(tmp_path, classes, [save_image(tmp_path / "t.png", red)], [0])
    val = ImageFolderData(tmp_path, classes, [save_image(tmp_path / "v.png", green)], [2])
    knn_model = FakeModel({red: [1, 0], green: [0.9, 0.1]}, {})
    # the val image's only neighbour votes for class a; its class c ties at 0 with the 6 other unvoted classes:
    # 1 class above, 7 tied with 1 positive, 4 of the top 5 slots left -> top-5 credit 1, 0 or 4/7
    result = tasks.knn(knn_model, train, val, _enc(), ks=(1,), ties=rule)
    top5 = {"optimistic": 100.0, "pessimistic": 0.0, "expected": 400 / 7}[rule]
    assert result.metrics == pytest.approx({"k1_top1": 0.0, "k1_top5": top5})
    assert result.ties == {"rule": rule, "tied": {"k1_top1": 0, "k1_top5": 1}}
