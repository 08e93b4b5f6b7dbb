"""align.data: joins, dropped rows, per-epoch permutations and batch assembly (RAM and streamed HDF5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_helpers import write_store

from align.data import AlignmentData, load_eval_data


@pytest.fixture
def stores(tmp_path):
    """20 images (row i = [i, i, i]); two caption stores whose caption of image i is [i, -i]; some invalid rows."""
    n = 20
    keys = [f"img{i}" for i in range(n)]
    images = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)
    image_valid = np.ones(n, dtype=bool)
    image_valid[3] = False
    image = write_store(tmp_path / "images.h5", "image", images, keys, valid=image_valid)
    texts = []
    for c in range(2):
        order = np.random.default_rng(c).permutation(n)
        feats = np.stack([order, -order], axis=1).astype(np.float32) + 1000 * c
        valid = np.ones(n, dtype=bool)
        valid[0] = c == 1  # store 0 has one invalid caption
        texts.append(write_store(tmp_path / f"cap{c}.h5", "text", feats, [f"c{c}_{i}" for i in order],
                                 [keys[i] for i in order], valid=valid, caption_column=f"col{c}"))  # fmt: skip
    extra_order = np.arange(n)[::-1]
    extra = write_store(tmp_path / "extra.h5", "text", np.stack([extra_order, extra_order], 1) + 5000.0,
                        [f"e{i}" for i in extra_order], [keys[i] for i in extra_order])  # fmt: skip
    return image, texts, extra


def image_of_caption(text: torch.Tensor) -> torch.Tensor:
    return text[:, 0] % 1000


def test_pairs_and_dropped_counts(stores):
    image, texts, _ = stores
    data = AlignmentData(image, texts, batch_size=8, seed=0)
    # 40 captions - 1 invalid caption - 2 captions of the invalid image 3 (one of them may be the invalid one)
    invalid_cap_image = int(data.text_stores[0].image_keys[0][3:])
    expected = 40 - 1 - (2 if invalid_cap_image != 3 else 1)
    assert data.num_pairs == expected and data.steps_per_epoch == expected // 8
    assert data.dropped == {"invalid images": 1, "invalid captions": 1}
    assert [s["caption_column"] for s in data.caption_sources()] == ["col0", "col1"]


@pytest.mark.parametrize("mode", ["ram", "stream"])
def test_batches_pair_each_caption_with_its_image(stores, mode):
    image, texts, _ = stores
    data = AlignmentData(image, texts, batch_size=8, seed=3, mode=mode, stream_block=8)
    assert data.mode == mode
    seen = []
    for epoch in range(2):
        epoch_rows = []
        for b in range(data.steps_per_epoch):
            batch = data.batch(epoch, b)
            assert batch.image.dtype == torch.float32 and batch.image.shape == (8, 3)
            torch.testing.assert_close(batch.image[:, 0], image_of_caption(batch.text))
            assert not torch.any(batch.image[:, 0] == 3)  # the invalid image never appears
            epoch_rows.append(batch.text[:, 0].tolist())
        flat = sum(epoch_rows, [])
        assert len(set(flat)) == len(flat)  # no pair twice within an epoch
        seen.append(flat)
    assert seen[0] != seen[1]  # a fresh order every epoch
    again = AlignmentData(image, texts, batch_size=8, seed=3, mode=mode, stream_block=8)
    torch.testing.assert_close(
        again.batch(1, 1).text, data.batch(1, 1).text
    )  # order is a function of (seed, epoch)


def test_ram_order_is_a_global_permutation(stores):
    image, texts, _ = stores
    data = AlignmentData(image, texts, batch_size=4, seed=0)
    order = data.epoch_order(0)
    assert sorted(order.tolist()) == list(range(data.num_pairs))
    expected = np.random.default_rng([0, 0]).permutation(data.num_pairs)
    assert order.tolist() == expected.tolist()


def test_distributed_ranks_split_the_global_batch(stores):
    image, texts, _ = stores
    whole = AlignmentData(image, texts, batch_size=8, seed=1)
    parts = [AlignmentData(image, texts, batch_size=8, seed=1, rank=r, world_size=2) for r in range(2)]
    joined = torch.cat([p.batch(0, 1).text for p in parts])
    torch.testing.assert_close(joined, whole.batch(0, 1).text)


def test_extra_text_follows_the_image(stores):
    image, texts, extra = stores
    data = AlignmentData(image, texts, [extra], batch_size=8, seed=0)
    batch = data.batch(0, 0)
    torch.testing.assert_close(batch.extra_text[:, 0] - 5000, batch.image[:, 0])


def test_eval_data_links_captions_to_images(stores):
    image, texts, _ = stores
    ev = load_eval_data(image, texts)
    assert ev.image.shape == (19, 3)  # the invalid image is left out
    torch.testing.assert_close(ev.image[ev.caption_image, 0], image_of_caption(ev.text))
