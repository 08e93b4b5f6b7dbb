"""Every metric against hand-computed cases, including ties, several positives per query and empty classes."""

import math

import numpy as np
import pytest
import torch

from core import metrics as M


def test_retrieval_recall_several_positives_and_ties_count_against_the_positive():
    # 3 queries x 5 candidates; hand-ranked below.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.2, 0.3],  # positives {0, 2}: best positive 0.9 is top -> rank 0
            [0.5, 0.5, 0.4, 0.1, 0.0],  # positive {1}: tied with negative 0 -> rank 1 (tie counted against)
            [0.7, 0.6, 0.5, 0.4, 0.3],  # positives {3, 4}: best 0.4, negatives 0.7, 0.6, 0.5 above -> rank 3
        ]
    )
    positives = torch.zeros(3, 5, dtype=torch.bool)
    positives[0, [0, 2]] = True
    positives[1, 1] = True
    positives[2, [3, 4]] = True
    assert M.positive_ranks(scores, positives).tolist() == [0, 1, 3]
    got = M.retrieval_recall(scores, positives, ks=(1, 2, 3, 4))
    assert got == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 200 / 3, "R@4": 100.0})


def test_retrieval_recall_other_positives_do_not_push_a_positive_down_and_numpy_works():
    scores = np.array([[0.9, 0.8, 0.7, 0.95]])
    positives = np.array([[True, True, True, False]])
    assert M.retrieval_recall(scores, positives, ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0}


def _dense_recall(scores: list[list[float]], positives: list[set[int]], k: int) -> float:
    """Recall@k by hand: a query hits if some positive has fewer than k negatives scoring >= it."""
    hits = 0
    for row, pos in zip(scores, positives, strict=True):
        best = max(row[c] for c in pos)
        hits += sum(1 for c, s in enumerate(row) if c not in pos and s >= best) < k
    return 100.0 * hits / len(scores)


def test_image_text_retrieval_equals_a_dense_hand_computation_with_several_captions_per_image():
    # integer-valued embeddings, so many scores tie exactly (ties count against the positive)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(-2, 3, (5, 4), generator=generator).float()
    text = torch.randint(-2, 3, (12, 4), generator=generator).float()
    caption_image = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 4, 2])  # 1 to 4 captions per image
    ks = (1, 2, 5, 10)
    scores = (image @ text.T).tolist()
    i2t = [set((caption_image == i).nonzero().flatten().tolist()) for i in range(5)]
    t2i = [{int(owner)} for owner in caption_image]
    expected = {f"i2t_R@{k}": _dense_recall(scores, i2t, k) for k in ks}
    expected |= {f"t2i_R@{k}": _dense_recall((text @ image.T).tolist(), t2i, k) for k in ks}
    assert len({v for v in expected.values()}) > 2  # the example separates the cut-offs
    for chunk in (1, 3, 4096):
        got = M.image_text_retrieval(image, text, caption_image, ks=ks, chunk=chunk)
        assert list(got) == list(expected) and got == pytest.approx(expected)
    assert list(M.image_text_retrieval(image, text, caption_image)) == [
        "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
    ]  # fmt: skip


def test_image_text_retrieval_small_case_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    )  # captions 0, 1 of image 0; caption 2 of image 1
    got = M.image_text_retrieval(image, text, torch.tensor([0, 0, 1]), ks=(1, 2, 3), chunk=1)
    # i2t: image 0 best positive 1 ties caption 2 -> rank 1; image 1 positive 0 below caption 1, ties 0 -> rank 2
    # t2i: caption 0 -> rank 0; caption 1 prefers image 1 -> rank 1; caption 2 prefers image 0 -> rank 1
    assert got == pytest.approx(
        {
            "i2t_R@1": 0.0,
            "i2t_R@2": 50.0,
            "i2t_R@3": 100.0,
            "t2i_R@1": 100 / 3,
            "t2i_R@2": 100.0,
            "t2i_R@3": 100.0,
        }
    )


def test_image_text_retrieval_rejects_uncaptioned_images_and_bad_owners():
    image, text = torch.eye(3), torch.eye(3)[:2]
    with pytest.raises(ValueError, match="1 images have no caption"):
        M.image_text_retrieval(image, text, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        M.image_text_retrieval(image, text, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="same dimension"):
        M.image_text_retrieval(image, torch.ones(2, 4), torch.tensor([0, 1]))


def test_constant_scores_never_score_a_hit():
    scores = torch.zeros(4, 4)
    assert M.retrieval_recall(scores, torch.eye(4, dtype=torch.bool), ks=(1, 3)) == {"R@1": 0.0, "R@3": 0.0}
    assert M.topk_accuracy(torch.zeros(3, 5), torch.tensor([0, 1, 2]), ks=(1, 4)) == {
        "top1": 0.0,
        "top4": 0.0,
    }


def test_retrieval_recall_rejects_queries_without_positive_and_nan():
    with pytest.raises(ValueError, match="no positive"):
        M.retrieval_recall(torch.rand(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_recall(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))


def test_classification_metrics_with_ties_and_a_class_without_images():
    # 4 classes; class 3 has no images but is still a candidate (it wins sample 2).
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.2],  # target 0: correct
            [0.3, 0.3, 0.1, 0.0],  # target 1: tied with class 0 -> rank 1, miss at top-1
            [0.1, 0.2, 0.3, 0.4],  # target 2: class 3 higher -> rank 1
            [0.2, 0.1, 0.8, 0.3],  # target 2: correct
            [0.1, 0.5, 0.2, 0.9],  # target 0: rank 3
        ]
    )
    targets = torch.tensor([0, 1, 2, 2, 0])
    assert M.target_ranks(logits, targets).tolist() == [0, 1, 1, 0, 3]
    got = M.classification_metrics(logits, targets, ks=(1, 2))
    # top1 2/5; top2 4/5; per-class recall: class0 1/2, class1 0/1, class2 1/2 -> mean 1/3 (class 3 absent)
    assert got == pytest.approx({"top1": 40.0, "top2": 80.0, "mean_per_class_recall": 100 / 3})


def test_target_ranks_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match="targets must lie"):
        M.target_ranks(torch.rand(2, 3), torch.tensor([0, 3]))


def test_winoground_text_image_group_by_hand():
    # ex0 all right; ex1 text only; ex2 image only; ex3 everything tied
    c0_i0 = [1.0, 0.60, 0.60, 0.5]
    c0_i1 = [0.0, 0.65, 0.50, 0.5]
    c1_i0 = [0.0, 0.50, 0.65, 0.5]
    c1_i1 = [1.0, 0.70, 0.70, 0.5]
    assert M.winoground_scores(c0_i0, c0_i1, c1_i0, c1_i1) == {"text": 50.0, "image": 50.0, "group": 25.0}


def test_mmvp_pairs_need_both_statements_right_and_a_tie_picks_image_1():
    # SAIL's rule: a statement picks image 0 only if strictly more similar to it, so statement 0 loses a tie
    # (pair 2) and statement 1 wins it (pair 4)
    correct = M.mmvp_pair_correct(
        t0_i0=[0.9, 0.9, 0.5, 0.8, 0.9],
        t0_i1=[0.1, 0.1, 0.5, 0.2, 0.1],
        t1_i0=[0.2, 0.6, 0.1, 0.1, 0.5],
        t1_i1=[0.7, 0.4, 0.9, 0.9, 0.5],
    )
    assert correct.tolist() == [True, False, False, True, True]
    got = M.mmvp_scores(correct[:4], ["Color", "Color", "Color", "Texts"])
    assert got == pytest.approx({"Color": 100 / 3, "Texts": 100.0, "average": (100 / 3 + 100) / 2})


def test_precision_at_1_positive_first_ties_are_misses_and_ragged_candidates():
    assert M.precision_at_1(
        torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.3, 0.2]])
    ) == pytest.approx(100 / 3)
    ragged = [torch.tensor([0.4, 0.3]), np.array([0.2, 0.1, 0.0, 0.3]), torch.tensor([1.0, 0.0, 0.0])]
    assert M.precision_at_1(ragged) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match=">= 2 candidates"):
        M.precision_at_1([torch.tensor([1.0])])


def test_knn_weighted_vote_matches_hand_computation():
    # 2-D unit features; class 0 near the x-axis, class 1 near the y-axis.
    def unit(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    train = torch.tensor([unit(0), unit(10), unit(80), unit(90), unit(50)])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([unit(40)])
    t = 0.07
    sims = torch.tensor([math.cos(math.radians(40 - d)) for d in (0, 10, 80, 90, 50)], dtype=torch.float64)
    # k = 3: neighbours 50 (1), 10 (0), 80 / 0 tie? cos(30)=.866 (10deg), cos(40)=.766 (0 and 80deg): take top-3
    top = sims.topk(3)
    votes = torch.zeros(2, dtype=torch.float64)
    for s, i in zip(top.values, top.indices, strict=True):
        votes[labels[i]] += math.exp(s / t)
    got = M.knn_predict_scores(train, labels, query, num_classes=2, k=3, temperature=t)
    assert torch.allclose(got[0], votes)
    # k = 5: everyone votes: class 0 gets e^{cos40/t}+e^{cos30/t}, class 1 e^{cos40/t}+e^{cos50/t}+e^{cos10/t}
    vote0 = math.exp(math.cos(math.radians(40)) / t) + math.exp(math.cos(math.radians(30)) / t)
    vote1 = sum(math.exp(math.cos(math.radians(a)) / t) for a in (40, 50, 10))
    five = M.knn_predict_scores(train, labels, query, num_classes=2, k=5, temperature=t)[0]
    assert five.tolist() == pytest.approx([vote0, vote1])
    acc = M.knn_accuracy(train, labels, query, torch.tensor([1]), ks=(5,), temperature=t)
    assert acc == {"k5_top1": 100.0, "k5_top5": 100.0}


def test_knn_target_class_without_votes_is_a_miss():
    # class 2 gets no vote: it ties with the 5 other unvoted classes, all ranked before it -> rank 6
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    got = M.knn_accuracy(
        train, torch.tensor([0, 0]), torch.tensor([[1.0, 0.0]]), torch.tensor([2]), ks=(2,), num_classes=7
    )
    assert got == {"k2_top1": 0.0, "k2_top5": 0.0}


def test_mean_per_class_recall_ignores_absent_classes():
    assert M.mean_per_class_recall([True, False, True, True], [0, 0, 5, 7]) == pytest.approx(
        (50 + 100 + 100) / 3
    )
