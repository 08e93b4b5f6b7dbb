"""Shared fixtures for the encode pipeline/input/CLI tests: tiny deterministic backbones and input builders.

The tiny backbones implement the interface of ``encode.backbones`` (``transform``, ``encode``, ``dim``,
``meta()``) with a fixed random projection, so tests can check stored features against a direct computation.
Inputs are built in a temp dir from real COCO-MINI images and captions (``../shared/data`` from the repo root).
:func:`tiny_cli` is ``python -m encode`` with those backbones, for fault tests that run it in a subprocess.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COCO = ROOT / ".." / "shared" / "data" / "coco-mini"
COCO_TRAIN_JSON = COCO / "annotations" / "captions_train2017.json"


class TinyTransform:
    """Picklable: RGB, resize to ``size``², float CHW in [0, 1]."""

    def __init__(self, size: int = 8) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class TinyImageBackbone:
    """Features = flattened pixels @ a fixed random matrix. ``die_on_call=n`` sends ``die_signal`` (SIGKILL) to
    the process on call n; every call takes at least ``delay`` seconds (a run long enough to interrupt)."""

    name = "tiny-image"
    revision = "test-1"
    device = torch.device("cpu")

    def __init__(
        self,
        dim: int = 6,
        size: int = 8,
        pooling: str = "mean",
        die_on_call: int | None = None,
        die_signal: signal.Signals = signal.SIGKILL,
        delay: float = 0.0,
    ) -> None:
        self.dim = dim
        self.pooling = pooling
        self.transform = TinyTransform(size)
        self.weight = torch.randn(3 * size * size, dim, generator=torch.Generator().manual_seed(0))
        self.die_on_call = die_on_call
        self.die_signal = die_signal
        self.delay = delay
        self.calls = 0

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.die_on_call:
            os.kill(os.getpid(), self.die_signal)
        time.sleep(self.delay)
        return pixel_values.flatten(1).float() @ self.weight

    def reference(self, image: Image.Image) -> np.ndarray:
        """The features of one image computed directly (float64)."""
        pixels = self.transform(image).flatten().double()
        return (pixels @ self.weight.double()).numpy()

    def meta(self) -> dict:
        return {
            "modality": "image",
            "model": self.name,
            "model_revision": self.revision,
            "pooling": self.pooling,
            "dim": self.dim,
            "normalized": False,
        }


class TinyTextBackbone:
    """Features = counts of each byte value modulo ``dim`` (exact in float32), plus the text length; every call
    takes at least ``delay`` seconds."""

    name = "tiny-text"
    revision = "test-1"
    pooling = "mean"
    instruction = None
    max_length = None
    device = torch.device("cpu")

    def __init__(self, dim: int = 5, delay: float = 0.0) -> None:
        self.dim = dim
        self.delay = delay
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        time.sleep(self.delay)
        return torch.from_numpy(np.stack([self.reference(t) for t in texts]).astype(np.float32))

    def reference(self, text: str) -> np.ndarray:
        out = np.zeros(self.dim)
        for byte in text.encode("utf-8"):
            out[byte % self.dim] += 1
        out[0] += len(text)
        return out

    def meta(self) -> dict:
        return {
            "modality": "text",
            "model": self.name,
            "model_revision": self.revision,
            "pooling": self.pooling,
            "dim": self.dim,
            "normalized": False,
            "instruction": None,
            "max_length": None,
        }


def coco_sample(n: int) -> tuple[list[dict], dict[int, list[dict]]]:
    """The first ``n`` COCO-MINI train images (COCO 'images' entries) and their caption annotations."""
    content = json.loads(COCO_TRAIN_JSON.read_text())
    images = content["images"][:n]
    ids = {image["id"] for image in images}
    captions: dict[int, list[dict]] = {i: [] for i in ids}
    for annotation in content["annotations"]:
        if annotation["image_id"] in ids:
            captions[annotation["image_id"]].append(annotation)
    return images, captions


def truncated_jpeg(source: Path) -> bytes:
    """The first half of a real JPEG: a valid header, then the data stops."""
    data = source.read_bytes()
    return data[: len(data) // 2]


def write_coco_subset(folder: Path, n: int) -> Path:
    """A COCO captions JSON of the first ``n`` images, in ``folder/annotations`` + ``folder/train2017``."""
    images, captions = coco_sample(n)
    (folder / "annotations").mkdir(parents=True)
    (folder / "train2017").mkdir()
    for image in images:
        shutil.copy(COCO / "train2017" / image["file_name"], folder / "train2017" / image["file_name"])
    annotations = [a for image in images for a in captions[image["id"]]]
    path = folder / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def manifest_frame(n: int, image_dir: str = "images"):
    """A DreamLIP-style manifest of the first ``n`` images: key, image, raw_caption, long_caption."""
    import pandas as pd

    images, captions = coco_sample(n)
    return pd.DataFrame(
        {
            "key": [f"{i:05d}" for i in range(n)],
            "image": [f"{image_dir}/{image['file_name']}" for image in images],
            "raw_caption": [captions[image["id"]][0]["caption"] for image in images],
            "long_caption": [" ".join(a["caption"] for a in captions[image["id"]]) for image in images],
        }
    )


def write_manifest(path: Path, frame) -> Path:
    suffix = path.suffix
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    return path


def copy_images(frame, folder: Path) -> None:
    """Copy the COCO images a manifest names into ``folder`` (its image paths are relative to it)."""
    for relative in frame["image"]:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COCO / "train2017" / Path(relative).name, target)


def write_webdataset(folder: Path, n: int, per_shard: int) -> list[dict]:
    """img2dataset's WebDataset layout: shards 00000.tar ... with {key}.jpg, {key}.txt, {key}.json."""
    import webdataset as wds

    images, captions = coco_sample(n)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, image in enumerate(images):
        shard, index = divmod(i, per_shard)
        key = f"{shard:05d}{index:04d}"
        caption = captions[image["id"]][0]["caption"]
        meta = {
            "url": f"http://127.0.0.1/{image['file_name']}",
            "caption": caption,
            "key": key,
            "status": "success",
            "error_message": None,
            "width": image["width"],
            "height": image["height"],
            "raw_caption": caption,
            "shortSV_captions": captions[image["id"]][1]["caption"],
        }
        samples.append({"key": key, "file_name": image["file_name"], **meta})
    for shard in range(-(-n // per_shard)):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for sample in samples[shard * per_shard : (shard + 1) * per_shard]:
                meta = {k: v for k, v in sample.items() if k != "file_name"}
                sink.write(
                    {
                        "__key__": sample["key"],
                        "jpg": (COCO / "train2017" / sample["file_name"]).read_bytes(),
                        "txt": sample["caption"],
                        "json": json.dumps(meta, indent=4),
                    }
                )
    return samples


def open_image(data: bytes | Path) -> Image.Image:
    if isinstance(data, Path):
        data = data.read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_rank_main(
    rank: int, world_size: int, port: int, data: str, out: str, batch_size: int
) -> None:
    """One rank of a torchrun-style run (torch.multiprocessing.spawn target): gloo on CPU, tiny backbone."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    import torch.distributed as dist

    from encode import distributed
    from encode.inputs import load_rows
    from encode.pipeline import EncodeOptions, encode_images

    distributed.init_from_env()
    try:
        options = EncodeOptions(batch_size=batch_size, num_workers=1, dtype="float32", progress=False)
        encode_images(load_rows(data), TinyImageBackbone(), out, options=options)
    finally:
        dist.destroy_process_group()


def full_disk_setitem(writes: int) -> Callable[[h5py.Dataset, object, object], None]:
    """A replacement for ``h5py.Dataset.__setitem__`` that, from the ``writes + 1``-th write of a store's
    features on, raises what h5py raises on a full disk (OSError ENOSPC)."""
    original = h5py.Dataset.__setitem__
    count = 0

    def setitem(self: h5py.Dataset, key: object, value: object) -> None:
        nonlocal count
        if self.name == "/features":
            count += 1
            if count > writes:
                raise OSError(
                    errno.ENOSPC,
                    "Can't synchronously write data (file write failed: errno = 28, "
                    "error message = 'No space left on device')",
                )
        original(self, key, value)

    return setitem


def tiny_cli(argv: Sequence[str]) -> int:
    """``python -m encode`` (``encode.__main__.main``) with the tiny backbones in place of any model.

    Environment: ``TINY_DELAY`` seconds spent in every forward; ``TINY_FULL_DISK_AFTER=N`` makes the disk "full"
    after N feature writes (:func:`full_disk_setitem`).
    """
    import encode.__main__ as cli

    delay = float(os.environ.get("TINY_DELAY", "0"))

    def load_backbone(args, device: str) -> TinyImageBackbone | TinyTextBackbone:
        return TinyTextBackbone(delay=delay) if args.modality == "text" else TinyImageBackbone(delay=delay)

    cli.load_backbone = load_backbone
    if "TINY_FULL_DISK_AFTER" in os.environ:
        h5py.Dataset.__setitem__ = full_disk_setitem(int(os.environ["TINY_FULL_DISK_AFTER"]))
    return cli.main(list(argv))


# A script running :func:`tiny_cli` on its arguments; with ``TINY_RC_DIR`` set it also writes its exit code to
# ``rank-{RANK}.rc`` there (torchrun does not report the ranks' codes when it is stopped by a signal).
TINY_CLI_SCRIPT = f"""import os, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.encode_pipeline_helpers import tiny_cli
code = tiny_cli(sys.argv[1:])
if os.environ.get("TINY_RC_DIR"):
    with open(os.path.join(os.environ["TINY_RC_DIR"], "rank-" + os.environ.get("RANK", "0") + ".rc"), "w") as f:
        f.write(str(code))
sys.exit(code)
"""


def hold_open(path: Path, mode: str = "r+", seconds: float | None = None) -> subprocess.Popen:
    """Another process that opens ``path`` with h5py (taking its HDF5 file lock) and closes it after ``seconds``,
    or, when None, once its stdin is closed; returns once the file is open."""
    wait = f"time.sleep({seconds})" if seconds is not None else "sys.stdin.read()"
    script = (
        f"import h5py, sys, time\nf = h5py.File({str(path)!r}, {mode!r})\nprint('open', flush=True)\n"
        f"{wait}\nf.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()
    if line != "open":
        proc.kill()
        raise RuntimeError(f"could not open {path} in another process: {line!r}")
    return proc


def release(proc: subprocess.Popen) -> None:
    """Let a :func:`hold_open` process close the file and exit."""
    proc.stdin.close()
    proc.wait(timeout=60)
