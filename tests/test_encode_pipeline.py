"""The encode pipeline with tiny deterministic backbones on real COCO-MINI images and captions.

Stored features are checked against a direct float64 computation, failed rows are NaN/valid=False and reported,
a run killed with SIGKILL resumes to the same file bit for bit, and a 2-rank gloo run equals one process.
"""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch.multiprocessing as mp

from encode.distributed import merge_shards, shard_bounds, shard_path
from encode.inputs import load_rows
from encode.pipeline import EncodeOptions, encode_images, encode_range, encode_texts, image_job, read_image
from encode.store import FeatureStore, FeatureStoreWriter, IncompleteStoreError, StoreError
from tests.encode_pipeline_helpers import (
    COCO,
    ROOT,
    TinyImageBackbone,
    TinyTextBackbone,
    copy_images,
    distributed_rank_main,
    free_port,
    manifest_frame,
    truncated_jpeg,
    write_coco_subset,
    write_manifest,
    write_webdataset,
)

FLOAT32 = EncodeOptions(batch_size=4, num_workers=2, dtype="float32", progress=False)
BAD_ROWS = {2: "FileNotFoundError", 5: "OSError", 7: "UnidentifiedImageError", 8: "FileNotFoundError"}


def _manifest_with_bad_images(folder, n=12):
    """A manifest over real images where row 2 is missing, 5 truncated, 7 not an image, 8 has no path."""
    frame = manifest_frame(n)
    copy_images(frame, folder)
    (folder / frame["image"][2]).unlink()
    (folder / frame["image"][5]).write_bytes(
        truncated_jpeg(COCO / "train2017" / frame["image"][5].split("/")[-1])
    )
    (folder / frame["image"][7]).write_text("this is not an image")
    frame.loc[8, "image"] = ""
    write_manifest(folder / "manifest.csv", frame)
    return frame


def _datasets(path):
    with h5py.File(path) as f:
        return {name: f[name][...] for name in f}, dict(f.attrs)


def test_image_features_match_direct_computation(tmp_path):
    coco = write_coco_subset(tmp_path / "coco", 6)
    rows = load_rows(coco)
    backbone = TinyImageBackbone()
    summary = encode_images(rows, backbone, tmp_path / "img.h5", options=FLOAT32)
    assert (summary.rows, summary.failures, summary.encoded_rows) == (6, 0, 6)
    with FeatureStore(tmp_path / "img.h5") as store:
        assert store.keys.tolist() == rows.keys
        assert store.valid.all()
        assert store.image_keys is None
        assert (store.meta.model, store.meta.pooling, store.meta.dim) == ("tiny-image", "mean", 6)
        assert store.meta.dtype == "float32" and store.meta.source == str(coco)
        expected = np.stack([backbone.reference(read_image(path)) for path in rows.images])
        np.testing.assert_allclose(store.load(dtype=np.float64), expected, rtol=1e-5, atol=1e-5)


def test_float16_is_the_default_and_rounds_the_float32_features(tmp_path):
    rows = load_rows(write_coco_subset(tmp_path / "coco", 5))
    encode_images(rows, TinyImageBackbone(), tmp_path / "f32.h5", options=FLOAT32)
    encode_images(
        rows,
        TinyImageBackbone(),
        tmp_path / "f16.h5",
        options=EncodeOptions(batch_size=4, num_workers=0, progress=False),
    )
    with FeatureStore(tmp_path / "f16.h5") as f16, FeatureStore(tmp_path / "f32.h5") as f32:
        assert f16.meta.dtype == "float16"
        np.testing.assert_array_equal(f16.read(dtype=np.float16), f32.load().astype(np.float16))


def test_bad_images_are_nan_invalid_and_reported(tmp_path, caplog):
    frame = _manifest_with_bad_images(tmp_path)
    rows = load_rows(tmp_path)
    backbone = TinyImageBackbone()
    summary = encode_images(rows, backbone, tmp_path / "img.h5", options=FLOAT32)
    bad_keys = [frame["key"][i] for i in sorted(BAD_ROWS)]
    assert summary.failures == 4 and summary.failed_keys == bad_keys
    for i, error in BAD_ROWS.items():
        assert summary.failure_reasons[frame["key"][i]].startswith(error)
    assert "truncated" in summary.failure_reasons[frame["key"][5]]
    assert any(frame["key"][5] in message for message in caplog.messages)
    with FeatureStore(tmp_path / "img.h5") as store:
        assert store.failures == 4 and store.failed_keys == bad_keys
        features = store.load(dtype=np.float64)
        good = np.ones(len(frame), bool)
        good[sorted(BAD_ROWS)] = False
        assert store.valid.tolist() == good.tolist()
        assert np.isnan(features[~good]).all()
        expected = np.stack([backbone.reference(read_image(rows.images[i])) for i in np.flatnonzero(good)])
        np.testing.assert_allclose(features[good], expected, rtol=1e-5, atol=1e-5)


def test_truncated_image_inside_a_webdataset_shard_is_masked(tmp_path):
    samples = write_webdataset(tmp_path / "wds", 4, per_shard=4)
    rows = load_rows(tmp_path / "wds")
    ref = rows.images[1]
    with open(ref.tar, "r+b") as f:  # keep the JPEG header, zero the rest of that member's bytes
        f.seek(ref.offset + ref.size // 2)
        f.write(b"\0" * (ref.size - ref.size // 2))
    summary = encode_images(rows, TinyImageBackbone(), tmp_path / "img.h5", options=FLOAT32)
    assert summary.failed_keys == [samples[1]["key"]]
    with FeatureStore(tmp_path / "img.h5") as store:
        assert store.valid.tolist() == [True, False, True, True]
        assert np.isnan(store.read(1, 2)).all() and not np.isnan(store.read(2, 4)).any()


def test_captions_one_row_each_empty_ones_invalid_and_never_encoded(tmp_path):
    frame = manifest_frame(5)
    frame.loc[1, "raw_caption"] = ""
    frame.loc[3, "raw_caption"] = "   "
    write_manifest(tmp_path / "m.parquet", frame)
    rows = load_rows(tmp_path / "m.parquet", caption_columns=["raw_caption"], need_images=False)
    backbone = TinyTextBackbone()
    summary = encode_texts(rows, backbone, tmp_path / "txt.h5", caption_column="raw_caption", options=FLOAT32)
    assert summary.failures == 2 and summary.failed_keys == ["00001#raw_caption", "00003#raw_caption"]
    assert summary.failure_reasons["00001#raw_caption"] == "empty caption"
    assert [t for call in backbone.calls for t in call] == [frame["raw_caption"][i] for i in (0, 2, 4)]
    with FeatureStore(tmp_path / "txt.h5") as store:
        assert store.meta.modality == "text" and store.meta.caption_column == "raw_caption"
        assert store.keys.tolist() == [f"{k}#raw_caption" for k in frame["key"]]
        assert store.image_keys.tolist() == frame["key"].tolist()
        features = store.load(dtype=np.float64)
        assert np.isnan(features[[1, 3]]).all()
        expected = np.stack([backbone.reference(frame["raw_caption"][i]) for i in (0, 2, 4)])
        np.testing.assert_array_equal(features[[0, 2, 4]], expected)


def test_coco_caption_store_joins_to_its_image_store(tmp_path):
    coco = write_coco_subset(tmp_path / "coco", 4)
    rows = load_rows(coco, caption_columns=["caption"])
    encode_images(rows, TinyImageBackbone(), tmp_path / "img.h5", options=FLOAT32)
    encode_texts(
        rows, TinyTextBackbone(), tmp_path / "txt.h5", caption_column="caption", limit=7, options=FLOAT32
    )
    with FeatureStore(tmp_path / "txt.h5") as text, FeatureStore(tmp_path / "img.h5") as image:
        assert len(text) == 7
        caps = rows.caption_rows("caption")
        assert text.keys.tolist() == caps.keys[:7]
        joined = text.join(image)
        assert [rows.keys[i] for i in joined] == caps.image_keys[:7]


def test_limit_encodes_the_first_rows(tmp_path):
    rows = load_rows(write_coco_subset(tmp_path / "coco", 6))
    encode_images(rows, TinyImageBackbone(), tmp_path / "img.h5", limit=3, options=FLOAT32)
    assert FeatureStore(tmp_path / "img.h5").keys.tolist() == rows.keys[:3]


def test_existing_output_or_other_settings_fail_before_writing(tmp_path):
    rows = load_rows(write_coco_subset(tmp_path / "coco", 3))
    out = tmp_path / "img.h5"
    encode_images(rows, TinyImageBackbone(), out, options=FLOAT32)
    before = out.read_bytes()
    with pytest.raises(StoreError, match="already exists.*--resume.*--overwrite"):
        encode_images(rows, TinyImageBackbone(), out, options=FLOAT32)
    resume = EncodeOptions(batch_size=4, num_workers=0, dtype="float32", resume=True, progress=False)
    for backbone, field in [(TinyImageBackbone(pooling="cls"), "pooling"), (TinyImageBackbone(dim=7), "dim")]:
        with pytest.raises(StoreError, match=field):
            encode_images(rows, backbone, out, options=resume)
    with pytest.raises(StoreError, match="dtype"):
        encode_images(rows, TinyImageBackbone(), out, options=EncodeOptions(resume=True, progress=False))
    assert out.read_bytes() == before
    summary = encode_images(rows, TinyImageBackbone(), out, options=resume)  # complete: nothing to do
    assert summary.encoded_rows == 0 and summary.resumed_from == 3


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    """kill -9 during the 3rd forward (2 batches flushed, loader workers running); --resume finishes it."""
    _manifest_with_bad_images(tmp_path, n=14)
    script = textwrap.dedent(
        f"""
        from encode.inputs import load_rows
        from encode.pipeline import EncodeOptions, encode_images
        from tests.encode_pipeline_helpers import TinyImageBackbone
        options = EncodeOptions(batch_size=4, num_workers=2, dtype="float16", progress=False)
        encode_images(load_rows({str(tmp_path)!r}), TinyImageBackbone(die_on_call=3), {str(tmp_path / "resumed.h5")!r}, options=options)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    with pytest.raises(IncompleteStoreError, match="8 of 14 rows"):
        FeatureStore(tmp_path / "resumed.h5")

    rows = load_rows(tmp_path)
    options = EncodeOptions(batch_size=4, num_workers=2, progress=False)
    resumed = encode_images(
        rows,
        TinyImageBackbone(),
        tmp_path / "resumed.h5",
        options=EncodeOptions(**{**options.__dict__, "resume": True}),
    )
    assert resumed.resumed_from == 8 and resumed.encoded_rows == 6
    assert resumed.failures == 4  # rows 2 and 5 failed before the crash, 7 and 8 after
    encode_images(rows, TinyImageBackbone(), tmp_path / "straight.h5", options=options)
    got, got_attrs = _datasets(tmp_path / "resumed.h5")
    want, want_attrs = _datasets(tmp_path / "straight.h5")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].tobytes() == want[name].tobytes(), name
    assert {k: str(v) for k, v in got_attrs.items()} == {k: str(v) for k, v in want_attrs.items()}


class _Interrupt(Exception):
    pass


class _FailingTextBackbone(TinyTextBackbone):
    def encode(self, texts):
        if len(self.calls) == 2:
            raise _Interrupt
        return super().encode(texts)


def test_text_resume_after_an_exception_equals_an_uninterrupted_run(tmp_path):
    rows = load_rows(write_coco_subset(tmp_path / "coco", 4), caption_columns=["caption"])
    options = EncodeOptions(batch_size=3, num_workers=0, progress=False)
    with pytest.raises(_Interrupt):
        encode_texts(
            rows, _FailingTextBackbone(), tmp_path / "a.h5", caption_column="caption", options=options
        )
    resumed = encode_texts(
        rows,
        TinyTextBackbone(),
        tmp_path / "a.h5",
        caption_column="caption",
        options=EncodeOptions(batch_size=3, resume=True, progress=False),
    )
    assert resumed.resumed_from == 6
    encode_texts(rows, TinyTextBackbone(), tmp_path / "b.h5", caption_column="caption", options=options)
    a, _ = _datasets(tmp_path / "a.h5")
    b, _ = _datasets(tmp_path / "b.h5")
    assert all(a[name].tobytes() == b[name].tobytes() for name in b)


def test_shard_bounds_cover_all_rows_in_whole_batches():
    for n, batch, world in [(10, 3, 2), (7, 4, 3), (100, 8, 4), (1, 64, 2), (64, 64, 2)]:
        bounds = [shard_bounds(n, batch, rank, world) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all(start % batch == 0 for start, _ in bounds)
        sizes = [-(-(stop - start) // batch) for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_two_gloo_ranks_equal_one_process(tmp_path):
    _manifest_with_bad_images(tmp_path, n=13)
    out = tmp_path / "two.h5"
    args = (2, free_port(), str(tmp_path), str(out), 3)
    mp.spawn(distributed_rank_main, args=args, nprocs=2, join=True)  # spawn: forking a used torch can hang
    one = tmp_path / "one.h5"
    encode_images(
        load_rows(tmp_path),
        TinyImageBackbone(),
        one,
        options=EncodeOptions(batch_size=3, num_workers=1, dtype="float32", progress=False),
    )
    got, got_attrs = _datasets(out)
    want, want_attrs = _datasets(one)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    assert got_attrs["failures"] == want_attrs["failures"] == 4
    assert got_attrs["failed_keys"] == want_attrs["failed_keys"]
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.h5"]  # the shards were merged and removed


def test_merge_refuses_missing_shards_and_resumes_an_interrupted_merge(tmp_path):
    rows = load_rows(write_coco_subset(tmp_path / "coco", 7))
    options = EncodeOptions(batch_size=2, num_workers=0, dtype="float32", progress=False)
    job = image_job(rows, TinyImageBackbone(), dtype="float32")
    out = tmp_path / "img.h5"
    encode_range(job, shard_path(out, 0, 2), *shard_bounds(7, 2, 0, 2), options)
    with pytest.raises(StoreError, match=r"shard-1-of-2.h5 \(rows 4-7\) is missing"):
        merge_shards(out, job.meta, job.keys, None, 2, 2)
    assert not out.exists()
    encode_range(job, shard_path(out, 1, 2), *shard_bounds(7, 2, 1, 2), options)
    with FeatureStoreWriter(out, job.meta, job.keys) as partial, FeatureStore(shard_path(out, 0, 2)) as shard:
        partial.write(shard.read(0, 3), shard.valid[:3])  # a merge killed after 3 rows
    summary = merge_shards(out, job.meta, job.keys, None, 2, 2, resume=True)
    assert summary["rows"] == 7
    assert not shard_path(out, 0, 2).exists() and not shard_path(out, 1, 2).exists()
    encode_images(rows, TinyImageBackbone(), tmp_path / "one.h5", options=options)
    got, _ = _datasets(out)
    want, _ = _datasets(tmp_path / "one.h5")
    assert all(got[name].tobytes() == want[name].tobytes() for name in want)


def _timm_transform(model_name: str = "tf_efficientnet_lite0"):
    import timm

    from encode.backbones.timm_vision import timm_transform

    return timm_transform(timm.create_model(model_name, pretrained=False))


def test_split_transform_is_bit_identical_to_the_timm_transform_on_coco_images():
    import torch

    transform = _timm_transform()
    split = transform.split()
    assert split is not None and len(split.normalize) == 1
    images = [read_image(path) for path in load_rows(COCO / "train2017").images[:12]]
    images.append(images[0].convert("L"))  # converted to RGB as the whole transform converts it
    whole = torch.stack([transform(image) for image in images])
    staged = [split.image(image) for image in images]
    assert all(pixels.dtype == torch.uint8 for pixels in staged)
    assert torch.equal(split.batch(torch.stack(staged)), whole)


def test_transforms_that_cannot_be_split_say_so():
    from torchvision import transforms as T

    from encode.backbones.base import RGBTransform

    normalize = T.Normalize([0.5] * 3, [0.5] * 3)
    assert RGBTransform(T.Compose([T.Resize(8), T.ToTensor(), normalize])).split() is not None
    assert RGBTransform(T.Compose([T.Resize(8), T.ToTensor(), T.RandomErasing()])).split() is None
    assert RGBTransform(T.Compose([T.Resize(8), normalize])).split() is None  # no ToTensor
    assert RGBTransform(lambda image: image).split() is None


def test_decoding_threads_store_what_worker_processes_store(tmp_path):
    """``num_workers=0`` (threads, the ToTensor -> Normalize tail on the batch) against 2 worker processes
    (the whole transform per image): the same bytes, the same failed rows and reasons."""
    from torchvision import transforms as T

    from encode.backbones.base import RGBTransform

    frame = _manifest_with_bad_images(tmp_path)
    rows = load_rows(tmp_path)
    backbone = TinyImageBackbone()
    backbone.transform = RGBTransform(
        T.Compose(
            [T.Resize(9), T.CenterCrop(8), T.ToTensor(), T.Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.25])]
        )
    )
    summaries = {}
    for workers in (0, 2):
        options = EncodeOptions(batch_size=5, num_workers=workers, dtype="float32", progress=False)
        summaries[workers] = encode_images(rows, backbone, tmp_path / f"img{workers}.h5", options=options)
    threads, processes = (_datasets(tmp_path / f"img{w}.h5")[0] for w in (0, 2))
    assert threads.keys() == processes.keys()
    for name in threads:
        np.testing.assert_array_equal(threads[name], processes[name], err_msg=name)
    assert summaries[0].failed_keys == summaries[2].failed_keys == [frame["key"][i] for i in sorted(BAD_ROWS)]
    assert summaries[0].failure_reasons == summaries[2].failure_reasons
    assert np.isfinite(threads["features"][threads["valid"]]).all()
