"""`python -m evaluate index build|search` with a real model (a random linear head over the offline
efficientnet-lite0 / all-MiniLM-L6-v2 backbones) on real COCO-MINI images: the FAISS ranking is the brute-force
numpy ranking of the model's own embeddings, another model is refused, a stopped build resumes from the cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from integration_helpers import COCO, random_head_checkpoint
from PIL import Image

from evaluate.cli import main
from evaluate.models import load_model

N_IMAGES = 10
QUERIES = ("a dog on a skateboard", "a plate of food on a table")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_head_checkpoint(tmp_path_factory.mktemp("head") / "ckpt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    sources = sorted((COCO / "val2017").glob("*.jpg"))[:N_IMAGES]
    for i, source in enumerate(sources):
        sub = folder / ("a" if i % 2 else "b")  # nested folders: paths are kept relative to --images
        sub.mkdir(exist_ok=True)
        (sub / source.name).symlink_to(source)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def built(checkpoint, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    out, cache = root / "index", root / "cache"
    argv = ["index", "build", "--model", str(checkpoint), "--images", str(images), "--out", str(out)]
    assert main([*argv, "--cache-dir", str(cache), "--chunk-size", "4", "--batch-size", "3"]) == 0
    return out, cache, argv


def _search(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["index", "search", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_ranks_as_brute_force_numpy(built, checkpoint, images, capsys):
    out, _, _ = built
    config = json.loads((out / "index_config.json").read_text())
    paths = json.loads((out / "images.json").read_text())
    assert config["count"] == N_IMAGES == len(paths) and config["dim"] == 64
    assert sorted(paths) == paths and all(p.startswith(("a/", "b/")) for p in paths)
    model = load_model(str(checkpoint))
    image_emb = model.encode_image([Image.open(images / p).convert("RGB") for p in paths]).double().numpy()
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    for query, k in zip(QUERIES, (50, 3), strict=True):  # k beyond the index size gives every image once
        text = model.encode_text([query]).double().numpy()[0]
        scores = image_emb @ (text / np.linalg.norm(text))
        order = np.argsort(-scores, kind="stable")[:k]
        results = _search(capsys, str(out), query, "-k", str(k))["results"]
        assert [r["path"] for r in results] == [str(images / paths[i]) for i in order]
        assert [r["rank"] for r in results] == list(range(1, len(order) + 1))
        np.testing.assert_allclose([r["score"] for r in results], scores[order], atol=1e-5)
        if k == 50:
            everything = results
    assert len(everything) == N_IMAGES
    capsys.readouterr()
    assert main(["index", "search", str(out), QUERIES[0], "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].split()[2] == everything[0]["path"]


def test_another_query_model_is_refused(built, checkpoint, tmp_path, capsys):
    out, _, _ = built
    other = random_head_checkpoint(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["index", "search", str(out), QUERIES[0], "--model", str(other)]) == 2
    error = capsys.readouterr().err
    assert "was built with the model" in error and "not comparable" in error and str(checkpoint) in error
    assert _search(capsys, str(out), QUERIES[0], "--model", str(checkpoint), "-k", "1")["results"]


def test_stopped_build_resumes_and_bad_input_writes_nothing(built, images, tmp_path, capsys):
    out, cache, argv = built
    entries = sorted(cache.rglob("*.safetensors"))
    assert len(entries) == 3  # one backbone-feature entry per chunk of 4, 4, 2 images
    stamps = {path: path.stat().st_mtime_ns for path in entries}
    entries[1].unlink()  # as if the build had stopped during that chunk
    rebuilt = tmp_path / "again"
    argv = [a if a != str(out) else str(rebuilt) for a in argv]
    assert main([*argv, "--cache-dir", str(cache), "--chunk-size", "4", "--batch-size", "3"]) == 0
    after = sorted(cache.rglob("*.safetensors"))
    assert len(after) == 3 and entries[1] in after
    assert all(path.stat().st_mtime_ns == stamps[path] for path in (entries[0], entries[2]))
    assert (rebuilt / "index.faiss").read_bytes() == (out / "index.faiss").read_bytes()

    assert main(argv) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a if a != str(images) else str(empty) for a in argv]
    target = tmp_path / "never"
    argv = [a if a != str(rebuilt) else str(target) for a in argv]
    assert main(argv) == 2
    assert "no images" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.glob(".never.*"))
    shutil.rmtree(rebuilt)
    assert main(["index", "search", str(rebuilt), "x"]) == 2
    assert "not an index folder" in capsys.readouterr().err
