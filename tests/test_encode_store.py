"""The HDF5 feature store: round trip, crash safety (a kill during creation, a refused write), output and resume
checks, --overwrite of an unreadable file, a store locked by another process, refusal of incomplete stores,
copying between stores, joins."""

import errno
import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import encode.store
from encode.store import (
    FeatureStore,
    FeatureStoreWriter,
    IncompleteStoreError,
    StoreError,
    StoreLockedError,
    StoreMeta,
    StoreWriteError,
    check_output,
    complete_store,
    disk_problem,
    index_of,
    is_lock_error,
    move_aside,
)
from tests.encode_pipeline_helpers import full_disk_setitem, hold_open, release

IMAGE_META = StoreMeta(modality="image", model="tiny", model_revision="abc", pooling="cls", dim=4)


def _text_meta(**overrides) -> StoreMeta:
    fields = {"modality": "text", "model": "minilm", "model_revision": "r1", "pooling": "mean", "dim": 3}
    return StoreMeta(**(fields | overrides))


def test_round_trip_keeps_rows_keys_and_marks_failures_nan(tmp_path):
    path = tmp_path / "img.h5"
    keys = ["a", "b", "ü-ñ", "d", "e"]
    feats = np.arange(20, dtype=np.float32).reshape(5, 4)
    valid = np.array([True, True, False, True, True])
    writer = FeatureStoreWriter(path, IMAGE_META, keys)
    writer.write(feats[:2], valid[:2])
    writer.write(feats[2:], valid[2:])
    summary = writer.finish()
    assert summary == {"rows": 5, "failures": 1, "failed_keys": ["ü-ñ"]}

    with FeatureStore(path) as store:
        assert store.meta == IMAGE_META
        assert store.keys.tolist() == keys
        assert store.valid.tolist() == valid.tolist()
        assert store.failures == 1 and store.failed_keys == ["ü-ñ"]
        loaded = store.load()
        assert np.isnan(loaded[2]).all()
        np.testing.assert_array_equal(loaded[valid], feats[valid])
        np.testing.assert_array_equal(store.read(3, 5), feats[3:5])
        np.testing.assert_array_equal(store.take(np.array([4, 0, 4, 1])), feats[[4, 0, 4, 1]])
        assert store.read(0, 2, dtype=np.float16).dtype == np.float16
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16
        assert f.attrs["complete"]


def test_rows_reach_the_disk_before_the_counter_that_says_they_are_written(tmp_path, monkeypatch):
    """Power loss or a node crash keeps only what was fsynced: each batch's rows are fsynced while the stored
    counter still holds the previous value, the header before the rename, and the complete flag at the end."""
    import encode.store as store_module

    seen: list[tuple[str, int | None, bool | None]] = []
    writer_box: list[FeatureStoreWriter] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        writer = writer_box[0] if writer_box else None
        if writer is not None and writer._file.id.valid:
            seen.append(("store", int(writer._rows_done[0]), bool(writer._file.attrs["complete"])))
        else:
            seen.append(("other", None, None))
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", recording_fsync)
    path = tmp_path / "img.h5"
    writer = FeatureStoreWriter(path, IMAGE_META, list("abcdef"))
    creation = list(seen)
    assert len(creation) == 2  # the header (before the rename) and the folder (the rename)
    writer_box.append(writer)
    for _ in range(3):
        writer.write(np.ones((2, 4), np.float32), np.ones(2, bool))
    writer.finish()
    assert seen[len(creation) :] == [
        ("store", 0, False),
        ("store", 2, False),
        ("store", 4, False),
        ("store", 6, True),
    ]


def test_existing_output_is_never_overwritten_silently(tmp_path):
    path = tmp_path / "img.h5"
    FeatureStoreWriter(path, IMAGE_META, ["a"]).close()
    with pytest.raises(
        StoreError, match=r"an unfinished store \(0 of 1 rows written\)\. Pass --resume"
    ) as info:
        FeatureStoreWriter(path, IMAGE_META, ["a"])
    assert "--overwrite" not in str(info.value)  # never advise discarding unfinished work
    writer = FeatureStoreWriter(path, IMAGE_META, ["x", "y"], overwrite=True)
    writer.write(np.ones((2, 4)), np.ones(2, bool))
    writer.finish()
    assert FeatureStore(path).keys.tolist() == ["x", "y"]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"model": "other"}, "model"), ({"pooling": "concat"}, "pooling"), ({"dim": 8}, "dim")],
)
def test_resume_against_other_settings_fails_and_keeps_the_file(tmp_path, change, message):
    path = tmp_path / "img.h5"
    writer = FeatureStoreWriter(path, IMAGE_META, ["a", "b"])
    writer.write(np.ones((1, 4)), np.ones(1, bool))
    writer.close()
    before = path.read_bytes()
    other = StoreMeta(**(IMAGE_META.to_attrs() | change))
    with pytest.raises(StoreError, match=message):
        FeatureStoreWriter.preflight(path, other, ["a", "b"], resume=True)
    with pytest.raises(StoreError, match="other rows"):
        FeatureStoreWriter.preflight(path, IMAGE_META, ["a", "c"], resume=True)
    assert path.read_bytes() == before


def test_bad_requests_fail_before_writing(tmp_path):
    with pytest.raises(StoreError, match="empty"):
        FeatureStoreWriter(tmp_path / "x.h5", IMAGE_META, [])
    with pytest.raises(StoreError, match="unique"):
        FeatureStoreWriter(tmp_path / "x.h5", IMAGE_META, ["a", "a"])
    with pytest.raises(StoreError, match="image_keys"):
        FeatureStoreWriter(tmp_path / "x.h5", _text_meta(), ["c1"])
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStoreWriter(tmp_path / "missing" / "x.h5", IMAGE_META, ["a"])
    with pytest.raises(StoreError, match="dtype"):
        StoreMeta(modality="image", model="m", model_revision="r", pooling="cls", dim=2, dtype="int8")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_a_resumable_file(tmp_path):
    """SIGKILL after two flushed chunks: the file opens, refuses readers, and resumes at row 4."""
    path = tmp_path / "img.h5"
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from encode.store import FeatureStoreWriter, StoreMeta
        meta = StoreMeta(modality="image", model="tiny", model_revision="abc", pooling="cls", dim=4)
        w = FeatureStoreWriter({str(path)!r}, meta, [str(i) for i in range(6)])
        w.write(np.full((2, 4), 1.0), np.ones(2, bool))
        w.write(np.full((2, 4), 2.0), np.ones(2, bool))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True)
    assert proc.returncode == -9

    with pytest.raises(IncompleteStoreError, match="4 of 6 rows.*--resume"):
        FeatureStore(path)
    writer = FeatureStoreWriter(path, IMAGE_META, [str(i) for i in range(6)], resume=True)
    assert writer.rows_done == 4
    writer.write(np.full((2, 4), 3.0), np.ones(2, bool))
    writer.finish()
    loaded = FeatureStore(path).load()
    np.testing.assert_array_equal(loaded[:, 0], [1, 1, 2, 2, 3, 3])


def test_caption_store_joins_to_image_store(tmp_path):
    images = FeatureStoreWriter(tmp_path / "img.h5", IMAGE_META, ["i1", "i2", "i3"])
    images.write(np.eye(3, 4), np.ones(3, bool))
    images.finish()
    captions = FeatureStoreWriter(
        tmp_path / "txt.h5",
        _text_meta(caption_column="raw"),
        ["c1", "c2", "c3", "c4"],
        ["i3", "i1", "i9", "i3"],
    )
    captions.write(np.ones((4, 3)), np.ones(4, bool))
    captions.finish()
    with FeatureStore(tmp_path / "txt.h5") as text, FeatureStore(tmp_path / "img.h5") as image:
        assert text.meta.caption_column == "raw"
        assert text.join(image).tolist() == [2, 0, -1, 2]
        with pytest.raises(StoreError, match="caption stores"):
            image.join(text)


def test_index_of_handles_missing_and_empty():
    assert index_of(np.array(["b", "a", "c"]), np.array(["a", "z", "c"])).tolist() == [1, -1, 2]
    assert index_of(np.array([], dtype=str), np.array(["a"])).tolist() == [-1]


def test_reader_rejects_non_stores(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable"):
        FeatureStore(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path / "other.h5")


def test_output_checks_and_complete_store_decide_without_writing(tmp_path):
    path = tmp_path / "img.h5"
    assert check_output(path) is None  # nothing there yet
    with pytest.raises(StoreError, match="output folder"):
        check_output(tmp_path / "missing" / "x.h5")
    with pytest.raises(StoreError, match="is a folder"):
        check_output(tmp_path)
    writer = FeatureStoreWriter(path, IMAGE_META, ["a", "b"])
    writer.write(np.ones((1, 4)), np.ones(1, bool))
    writer.close()
    before = path.read_bytes()

    with pytest.raises(StoreError, match="already exists"):
        check_output(path)
    assert check_output(path, overwrite=True) is None
    status = check_output(path, resume=True, settings={"modality": "image", "dtype": "float16"})
    assert (status.meta, status.complete, status.rows, status.rows_done) == (IMAGE_META, False, 2, 1)
    with pytest.raises(StoreError, match="modality: 'image' in the file != 'text' now"):
        check_output(path, resume=True, settings={"modality": "text"})
    assert complete_store(path, IMAGE_META, ["a", "b"]) is None  # unfinished: a resume continues it
    with pytest.raises(StoreError, match="other rows"):
        complete_store(path, IMAGE_META, ["a", "c"])
    assert path.read_bytes() == before

    resumed = FeatureStoreWriter(path, IMAGE_META, ["a", "b"], resume=True)
    resumed.write(np.zeros((1, 4)), np.zeros(1, bool))
    resumed.finish()
    status = complete_store(path, IMAGE_META, ["a", "b"])
    assert status.complete and (status.rows, status.failures, status.failed_keys) == (2, 1, ["b"])
    assert status.complete_with(["a", "b"], {"model": "tiny", "pooling": "cls"})
    assert not status.complete_with(["a", "b"], {"pooling": "mean"})
    assert not status.complete_with(["b", "a"], {})
    assert complete_store(tmp_path / "none.h5", IMAGE_META, ["a"]) is None

    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(
        StoreError, match="cannot be resumed: it is not a readable feature store.*move it aside"
    ):
        check_output(tmp_path / "junk.h5", resume=True)
    with pytest.raises(StoreError, match=r"already exists \(a complete store of 2 rows\)\. Pass --resume"):
        check_output(path)


def test_append_from_copies_another_store_from_the_resume_point(tmp_path):
    part = FeatureStoreWriter(tmp_path / "part.h5", IMAGE_META, ["c", "d", "e"])
    part_features = np.arange(12, dtype=np.float32).reshape(3, 4)
    part.write(part_features, np.array([True, False, True]))
    part.finish()
    writer = FeatureStoreWriter(tmp_path / "all.h5", IMAGE_META, ["a", "b", "c", "d", "e"])
    with FeatureStore(tmp_path / "part.h5") as source:
        with pytest.raises(StoreError, match="rows 0-2 are not written"):
            writer.append_from(source, 2)
        writer.write(np.ones((3, 4)), np.ones(3, bool))  # the resume point (3) falls inside the source
        writer.append_from(source, 2, block_rows=1)
    writer.finish()
    with FeatureStore(tmp_path / "all.h5") as store:
        assert store.valid.tolist() == [True, True, True, False, True]
        np.testing.assert_array_equal(store.read(2, 3), np.ones((1, 4)))
        assert np.isnan(store.read(3, 4)).all()
        np.testing.assert_array_equal(store.read(4, 5), part_features[2:])


def test_a_kill_during_creation_leaves_no_half_made_store(tmp_path):
    """The header is built as ``img.h5.creating``; ``img.h5`` appears only complete, so a resume just starts."""
    path = tmp_path / "img.h5"
    script = textwrap.dedent(
        f"""
        import os, signal, h5py
        from encode.store import FeatureStoreWriter, StoreMeta
        create = h5py.Group.create_dataset
        def dying(self, name, *args, **kwargs):
            if name == "keys":
                os.kill(os.getpid(), signal.SIGKILL)
            return create(self, name, *args, **kwargs)
        h5py.Group.create_dataset = dying
        meta = StoreMeta(modality="image", model="tiny", model_revision="abc", pooling="cls", dim=4)
        FeatureStoreWriter({str(path)!r}, meta, ["a", "b"])
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True).returncode == -9
    assert [p.name for p in tmp_path.iterdir()] == ["img.h5.creating"]
    assert check_output(path, resume=True) is None
    writer = FeatureStoreWriter(path, IMAGE_META, ["a", "b"], resume=True)
    writer.write(np.ones((2, 4)), np.ones(2, bool))
    writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.h5"]


def test_a_refused_write_raises_store_write_error_and_keeps_the_rows(tmp_path, monkeypatch):
    path = tmp_path / "img.h5"
    keys = [str(i) for i in range(6)]
    writer = FeatureStoreWriter(path, IMAGE_META, keys)
    with monkeypatch.context() as patch:
        patch.setattr(h5py.Dataset, "__setitem__", full_disk_setitem(1))
        writer.write(np.full((2, 4), 1.0), np.ones(2, bool))
        with pytest.raises(StoreWriteError) as info, writer:
            writer.write(np.full((2, 4), 2.0), np.ones(2, bool))
    assert str(info.value) == (
        f"cannot write {path}: the disk is full (no space left on device). 2 of 6 rows are saved; "
        "free some space, then run the same command with --resume."
    )
    resumed = FeatureStoreWriter(path, IMAGE_META, keys, resume=True)
    assert resumed.rows_done == 2
    resumed.write(np.full((4, 4), 3.0), np.ones(4, bool))
    resumed.finish()
    np.testing.assert_array_equal(FeatureStore(path).load()[:, 0], [1, 1, 3, 3, 3, 3])


def test_disk_problems_are_named():
    assert disk_problem(OSError(errno.ENOSPC, "No space left on device")).startswith("the disk is full")
    assert disk_problem(OSError("Can't write data (errno = 28, error message = 'No space left')")).startswith(
        "the disk is full"
    )
    assert disk_problem(OSError(errno.EDQUOT, "Disk quota exceeded")) == "the disk quota is exceeded"
    assert disk_problem(OSError(errno.EROFS, "Read-only file system")) == "the file system is read-only"
    assert disk_problem(OSError(errno.EIO, "x")) == "the write failed (Input/output error)"


def test_overwrite_replaces_a_store_and_moves_any_other_file_aside(tmp_path, caplog, monkeypatch):
    path = tmp_path / "img.h5"
    path.write_bytes(b"\x89HDF not really")
    writer = FeatureStoreWriter(path, IMAGE_META, ["a"], overwrite=True)
    writer.write(np.ones((1, 4)), np.ones(1, bool))
    writer.finish()
    (aside,) = tmp_path.glob("img.unreadable-*.h5")
    assert aside.read_bytes() == b"\x89HDF not really"
    assert f"moved it aside to {aside}" in caplog.text
    FeatureStoreWriter(path, IMAGE_META, ["b"], overwrite=True).close()  # a readable store: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([aside.name, "img.h5"])
    assert FeatureStore(path, allow_incomplete=True).keys.tolist() == ["b"]
    monkeypatch.setattr(encode.store.time, "strftime", lambda fmt: "20250101-120000")
    moved = []
    for text in ("1", "2"):
        (tmp_path / "x.h5").write_text(text)
        moved.append(move_aside(tmp_path / "x.h5"))
    assert [p.name for p in moved] == ["x.unreadable-20250101-120000.h5", "x.unreadable-20250101-120000-2.h5"]
    assert [p.read_text() for p in moved] == ["1", "2"]  # never one over another


def test_a_store_held_open_elsewhere_is_waited_for_then_reported(tmp_path, monkeypatch):
    path = tmp_path / "img.h5"
    writer = FeatureStoreWriter(path, IMAGE_META, ["a", "b"])
    writer.write(np.ones((1, 4)), np.ones(1, bool))
    writer.close()
    monkeypatch.setattr(encode.store, "LOCK_WAIT_SECONDS", 0.5)
    other = hold_open(path, "r+")
    try:
        for attempt in (
            lambda: check_output(path, resume=True),
            lambda: check_output(path, overwrite=True),
            lambda: FeatureStore(path, allow_incomplete=True),
            lambda: FeatureStoreWriter(path, IMAGE_META, ["a", "b"], resume=True),
        ):
            began = time.monotonic()
            with pytest.raises(StoreLockedError, match="is open in another process") as info:
                attempt()
            assert time.monotonic() - began >= 0.5
            assert "workers still exiting" in str(info.value) and "--overwrite" not in str(info.value)
            assert is_lock_error(info.value.__cause__)
    finally:
        release(other)
    assert check_output(path, resume=True).rows_done == 1
    assert not is_lock_error(OSError("Unable to synchronously open file (file signature not found)"))
