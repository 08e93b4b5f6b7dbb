"""Training mixtures from a YAML file: validation, video-caption / video-retrieval / visdoc subsets read from local
files, sub-batches of one subset each, drawn in proportion to the weights."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_vlm2vec_video import sample_images, save_video_qwen, write_frames
from vlm2vec_helpers import single_thread  # noqa: F401 (autouse fixture)

from vlm2vec.mixture import MixtureBatchSampler, MixtureData, MixtureError, read_mixture
from vlm2vec.train import main as train_main


def write_yaml(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_mixture_root(tmp_path: Path) -> Path:
    frames = sample_images(8)
    for i in range(3):
        write_frames(tmp_path / "frames" / f"v{i}", frames[i : i + 5])
    rows = [
        {
            "id": i,
            "video": f"v{i}",
            "conversations": [{"value": "<video>\nDescribe the video."}, {"value": f"caption {i}"}],
        }
        for i in range(3)
    ]
    (tmp_path / "caption.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pages = []
    for i, image in enumerate(frames[:4]):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pages.append({"query": f"query {i}", "image": {"bytes": buffer.getvalue(), "path": None}})
    (tmp_path / "colpali").mkdir()
    pd.DataFrame(pages).to_parquet(tmp_path / "colpali/train-00000.parquet")
    return tmp_path


@pytest.fixture
def mixture_root(tmp_path) -> Path:
    return write_mixture_root(tmp_path)


def spec() -> dict:
    video = {"dataset_path": "caption.jsonl", "video_frame_basedir": "frames", "num_frames": 4}
    return {
        "video_caption": {"dataset_parser": "llavahound_caption", "weight": 5, **video},
        "video_caption-video": {
            "dataset_parser": "llavahound_caption",
            "weight": 5,
            "data_mode": "video_retrieval",
            "num_rows": "2",
            **video,
        },
        "colpali_train_set": {"dataset_parser": "vidore", "dataset_path": "colpali", "weight": 10},
    }


def test_mixture_reads_local_subsets(mixture_root):
    subsets = read_mixture(write_yaml(mixture_root / "mix.yaml", spec()))
    assert [(s.name, s.weight, s.num_sample_per_subset) for s in subsets] == [
        ("video_caption", 5.0, None),
        ("video_caption-video", 5.0, 2),
        ("colpali_train_set", 10.0, None),
    ]
    data = MixtureData(mixture_root, subsets)
    assert data.subset_sizes == [3, 2, 4]
    caption = data[0]
    frames = caption.query.video
    assert [p.name for p in frames] == [f"frame_{i * 4 // 3 + 1}.jpg" for i in range(4)]  # 4 of 5, uniform
    assert caption.query.text == "Describe the video." and caption.positives[0].text == "caption 0"
    retrieval = data[3]
    assert retrieval.query.video is None and retrieval.query.text.endswith("caption 0")
    assert retrieval.positives[0].video is not None
    page = data[5]
    assert page.query.text == "query 0" and isinstance(page.positives[0].image, Image.Image)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset_parser": "webdataset"}, "dataset_parser"),
        ({"weight": 0}, "weight"),
        ({"num_sample_per_subset": "many"}, "num_sample_per_subset"),
    ],
)
def test_mixture_errors(mixture_root, change, message):
    bad = spec()
    bad["video_caption"] |= change
    with pytest.raises(MixtureError, match=message):
        read_mixture(write_yaml(mixture_root / "bad.yaml", bad))


def test_missing_frames_are_an_error(mixture_root):
    bad = spec()
    bad["video_caption"]["video_frame_basedir"] = "nowhere"
    with pytest.raises(MixtureError, match="frame folder"):
        MixtureData(mixture_root, read_mixture(write_yaml(mixture_root / "bad.yaml", bad)))


def test_sub_batches_follow_the_weights():
    sizes, weights = [50, 80, 200], [5.0, 5.0, 10.0]
    sampler = MixtureBatchSampler(sizes, weights, batch_size=16, sub_batch_size=4, total_steps=600, seed=3)
    offsets = np.cumsum([0, *sizes])
    counts = np.zeros(3)
    for batch in sampler:
        assert len(batch) == 16
        for start in range(0, 16, 4):
            owners = {int(np.searchsorted(offsets, i, side="right") - 1) for i in batch[start : start + 4]}
            assert len(owners) == 1  # a sub-batch comes from one subset
            counts[owners.pop()] += 1
    expected = np.array(weights) / sum(weights)
    draws = counts.sum()
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) < 4 * sigma)
    again = list(MixtureBatchSampler(sizes, weights, 16, 4, total_steps=600, seed=3, start_step=590))
    assert again == list(sampler)[590:]
    ranks = [list(MixtureBatchSampler(sizes, weights, 8, 4, 5, seed=1, world_size=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == list(
        MixtureBatchSampler(sizes, weights, 16, 4, 5, seed=1)
    )
    with pytest.raises(MixtureError, match="divide"):
        MixtureBatchSampler(sizes, weights, 16, 5, 1)


def _train_args(model: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--data", str(root), "--data-mixture", str(root / "mix.yaml"),
        "--output-dir", str(out), "--batch-size", "4", "--subset-block-size", "2", "--steps", "4",
        "--save-every", "2", "--keep-last", "0", "--lr", "5e-3", "--warmup", "0", "--lora-r", "4",
        "--lora-alpha", "8", "--precision", "fp32", "--device", "cpu", "--num-workers", "0", "--no-progress",
        "--max-text-tokens", "16", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = write_mixture_root(tmp_path_factory.mktemp("mixture"))
    mix = spec()
    for settings in mix.values():
        settings.pop("num_frames", None)
        if "video_frame_basedir" in settings:
            settings["num_frames"] = 2
    write_yaml(root / "mix.yaml", mix)
    model = save_video_qwen(tmp_path_factory.mktemp("qwen") / "model")
    out = root / "run"
    assert train_main(_train_args(model, root, out)) == 0
    return model, root, out


def _losses(out: Path) -> list[tuple]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, lines)]


def test_training_from_a_mixture_and_exact_resume(mixture_run, tmp_path):
    model, root, out = mixture_run
    losses = _losses(out)
    assert [step for step, _, _ in losses] == [1, 2, 3, 4] and all(np.isfinite(loss) for _, loss, _ in losses)
    config = json.loads((out / "checkpoints" / "step_4" / "config.json").read_text())
    assert config["train"]["data_mixture"] == str(root / "mix.yaml")
    # resumed from step 2, the run sees the same batches: the same losses and the same weights at step 4
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    shutil.rmtree(resumed / "final")
    assert train_main(_train_args(model, root, resumed, "--resume", "latest")) == 0
    assert _losses(resumed) == losses
    want = load_file(out / "checkpoints" / "step_4" / "model.safetensors")
    got = load_file(resumed / "checkpoints" / "step_4" / "model.safetensors")
    assert want.keys() == got.keys() and len(want) > 0
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_bad_mixture_fails_before_writing(mixture_run, tmp_path):
    model, root, _ = mixture_run
    bad = spec()
    bad["video_caption"]["weight"] = -1
    write_yaml(tmp_path / "mix.yaml", bad)
    args = _train_args(model, root, tmp_path / "out")
    args[args.index("--data-mixture") + 1] = str(tmp_path / "mix.yaml")
    assert train_main(args) == 2 and not (tmp_path / "out").exists()
    args[args.index("--data-mixture") + 1] = str(tmp_path / "missing.yaml")
    assert train_main(args) == 2 and not (tmp_path / "out").exists()
