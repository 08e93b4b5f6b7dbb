"""ImageNet-1k val as it is downloaded: one flat folder of ``ILSVRC2012_val_NNNNNNNN.JPEG`` and the ground truth
beside it, from the ILSVRC2012 devkit (``ILSVRC2012_validation_ground_truth.txt`` holds an ILSVRC2012_ID per
image, ``meta.mat`` maps IDs to wnids), from torchvision's parsed ``meta.bin``, or from Kaggle's
``LOC_val_solution.csv``.

The devkit is parsed as torchvision's ``parse_devkit_archive`` does (its ``parse_meta_mat`` and
``parse_val_groundtruth_txt`` are closures inside it, so they cannot be called on an extracted devkit or an
archive of another checksum): the leaf synsets of ``meta.mat`` (``num_children == 0``) map ILSVRC2012_IDs to
wnids, and line i of the ground truth is the ID of image i. torchvision's ``load_meta_file`` reads ``meta.bin``.
"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from evaluate.layouts.base import Layouts, first_existing, list_images

VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})$")
GROUND_TRUTH_TXT = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
META_BIN = "meta.bin"  # torchvision.datasets.ImageNet's parsed devkit
DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_ARCHIVE = f"{DEVKIT}.tar.gz"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
KAGGLE_IMAGES = ("ILSVRC", "Data", "CLS-LOC")
LAYOUT_DEVKIT = "ImageNet val + devkit"  # names in catalog.ZEROSHOT
LAYOUT_META_BIN = "ImageNet val + meta.bin"
LAYOUT_KAGGLE = "ImageNet val, Kaggle"


@dataclass
class FlatVal:
    """The images of a flat val folder with the wnid of each, and the class order the ground truth implies."""

    root: Path
    images: list[Path]
    wnids: list[str]
    classes: list[str]  # sorted wnids of the ground truth: ImageNet's standard class-index order
    source: str  # the ground-truth file(s) read
    layout: str  # the accepted layout (catalog.ZEROSHOT) it matched


def flat_image_dir(data: Path, root: Path, split: str | None) -> Path | None:
    """The first folder holding images directly (not in class folders): ``root`` (DATA or DATA/split),
    Kaggle's ``ILSVRC/Data/CLS-LOC/{split}``, or the extracted ``ILSVRC2012_img_val/``."""
    candidates = [root, data.joinpath(*KAGGLE_IMAGES, split or "val"), data / "ILSVRC2012_img_val"]
    for candidate in candidates:
        if candidate.is_dir() and list_images(candidate):
            return candidate
    return None


def _unique(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path not in out:
            out.append(path)
    return out


def _search_dirs(data: Path, image_dir: Path) -> list[Path]:
    dirs = [data, data / "data", data / DEVKIT / "data", image_dir, image_dir.parent]
    if (
        image_dir.parent.parts[-3:] == KAGGLE_IMAGES
    ):  # --data .../ILSVRC/Data/CLS-LOC: the Kaggle root is above
        dirs.append(image_dir.parents[3])
    return _unique(dirs)


def read_flat_val(data: Path, image_dir: Path, layouts: Layouts) -> FlatVal | None:
    """Label the images of ``image_dir`` from the first ground truth found near it; None when there is none."""
    dirs = _search_dirs(data, image_dir)
    images = list_images(image_dir)
    solution = first_existing(d / KAGGLE_SOLUTION for d in dirs)
    if solution is not None:
        return _kaggle(solution, image_dir, images, layouts)
    meta_bin = first_existing(d / META_BIN for d in dirs)
    if meta_bin is not None:
        val_wnids, classes = _meta_bin(meta_bin, layouts)
        return _numbered(image_dir, images, val_wnids, classes, str(meta_bin), LAYOUT_META_BIN, layouts)
    truth_txt = first_existing(d / GROUND_TRUTH_TXT for d in dirs)
    meta_mat = first_existing(d / META_MAT for d in dirs)
    if truth_txt is not None and meta_mat is not None:
        source = f"{truth_txt} + {meta_mat}"
        with meta_mat.open("rb") as handle:
            val_wnids, classes = _devkit(truth_txt.read_text(), handle, source, layouts)
        return _numbered(image_dir, images, val_wnids, classes, source, LAYOUT_DEVKIT, layouts)
    archive = first_existing(d / DEVKIT_ARCHIVE for d in dirs)
    if archive is not None:
        val_wnids, classes = _devkit_archive(archive, layouts)
        return _numbered(image_dir, images, val_wnids, classes, str(archive), LAYOUT_DEVKIT, layouts)
    if truth_txt is not None or meta_mat is not None:
        found, lacking = (truth_txt, META_MAT) if meta_mat is None else (meta_mat, GROUND_TRUTH_TXT)
        raise layouts.error(
            f"found {found} but no {lacking} (searched {', '.join(map(str, dirs))}): the ground truth holds an "
            "ILSVRC2012_ID per image and meta.mat maps those IDs to wnids; both are needed"
        )
    return None


def _numbered(
    image_dir: Path,
    images: list[Path],
    val_wnids: list[str],
    classes: list[str],
    source: str,
    layout: str,
    layouts: Layouts,
) -> FlatVal:
    """Image ``ILSVRC2012_val_{i:08d}`` has the wnid of ground-truth line i (1-based)."""
    numbers = [VAL_IMAGE.match(p.stem) for p in images]
    unnamed = [p.name for p, m in zip(images, numbers, strict=True) if m is None]
    if unnamed:
        raise layouts.error(
            f"{len(unnamed)} images in {image_dir} are not named ILSVRC2012_val_NNNNNNNN.* as the devkit's "
            f"ground truth ({source}) numbers them, e.g. {unnamed[:3]}"
        )
    index = [int(m.group(1)) for m in numbers if m is not None]
    beyond = [p.name for p, i in zip(images, index, strict=True) if not 1 <= i <= len(val_wnids)]
    if beyond:
        raise layouts.error(f"{source} labels images 1..{len(val_wnids)}; {image_dir} also has {beyond[:3]}")
    wnids = [val_wnids[i - 1] for i in index]
    return FlatVal(image_dir, images, wnids, classes, source, layout)


def _leaf_synsets(meta_mat: IO[bytes], what: str, layouts: Layouts) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets of the devkit's ``meta.mat`` (as torchvision reads it)."""
    try:
        import scipy.io
    except ImportError as error:  # scipy comes with scikit-learn / sentence-transformers
        raise layouts.error(f"reading {what} needs scipy (pip install scipy)") from error
    try:
        synsets = scipy.io.loadmat(meta_mat, squeeze_me=True)["synsets"]
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise layouts.error(
            f"{what}: not the devkit's meta.mat (a 'synsets' struct array): {error}"
        ) from error
    names = synsets.dtype.names or ()
    needed = ("ILSVRC2012_ID", "WNID", "num_children")
    if not set(needed) <= set(names):
        raise layouts.error(
            f"{what}: synsets lack fields {sorted(set(needed) - set(names))} (has {list(names)})"
        )
    return {
        int(idx): str(wnid)
        for idx, wnid, children in zip(
            synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"], strict=True
        )
        if int(children) == 0
    }


def _devkit(truth: str, meta_mat: IO[bytes], what: str, layouts: Layouts) -> tuple[list[str], list[str]]:
    id_to_wnid = _leaf_synsets(meta_mat, what, layouts)
    try:
        ids = [int(line) for line in truth.split()]
    except ValueError as error:
        raise layouts.error(
            f"{what}: the ground truth has a line that is not an ILSVRC2012_ID ({error})"
        ) from error
    unknown = sorted({i for i in ids if i not in id_to_wnid})
    if unknown:
        raise layouts.error(f"{what}: ground-truth IDs {unknown[:5]} are not leaf synsets of meta.mat")
    return [id_to_wnid[i] for i in ids], sorted(id_to_wnid.values())


def _devkit_archive(archive: Path, layouts: Layouts) -> tuple[list[str], list[str]]:
    """Read ``data/meta.mat`` and the ground truth straight from the devkit tarball."""
    try:
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in (META_MAT, GROUND_TRUTH_TXT) if n not in members]
            if missing:
                raise layouts.error(f"{archive} lacks {missing} (not the ILSVRC2012 devkit?)")
            truth_file = tar.extractfile(members[GROUND_TRUTH_TXT])
            meta_file = tar.extractfile(members[META_MAT])
            if truth_file is None or meta_file is None:
                raise layouts.error(f"{archive}: cannot read {GROUND_TRUTH_TXT} / {META_MAT}")
            truth = truth_file.read().decode()
            meta = io.BytesIO(meta_file.read())
    except (tarfile.TarError, OSError) as error:
        raise layouts.error(f"{archive} is not a readable tar.gz ({error})") from error
    return _devkit(truth, meta, str(archive), layouts)


def _meta_bin(path: Path, layouts: Layouts) -> tuple[list[str], list[str]]:
    from torchvision.datasets.imagenet import load_meta_file

    try:
        wnid_to_classes, val_wnids = load_meta_file(str(path.parent), path.name)
    except (RuntimeError, ValueError, TypeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise layouts.error(f"{path}: not torchvision's ImageNet meta.bin ({error})") from error
    return [str(w) for w in val_wnids], sorted(str(w) for w in wnid_to_classes)


def _kaggle(solution: Path, image_dir: Path, images: list[Path], layouts: Layouts) -> FlatVal:
    """``LOC_val_solution.csv``: ImageId (file stem), PredictionString whose first token is the wnid."""
    import pandas as pd

    table = pd.read_csv(solution, dtype=str)
    missing = {"ImageId", "PredictionString"} - set(table.columns)
    if missing:
        raise layouts.error(f"{solution}: missing columns {sorted(missing)} (has {list(table.columns)})")
    wnid_of: dict[str, str] = {}
    for row, (image_id, prediction) in enumerate(
        zip(table["ImageId"], table["PredictionString"], strict=True)
    ):
        tokens = str(prediction).split() if isinstance(prediction, str) else []
        if not tokens or not tokens[0].startswith("n"):
            raise layouts.error(
                f"{solution} row {row + 2}: PredictionString {prediction!r} has no leading wnid"
            )
        wnid_of[str(image_id).strip()] = tokens[0]
    unlabelled = [p.name for p in images if p.stem not in wnid_of]
    if unlabelled:
        raise layouts.error(
            f"{len(unlabelled)} images in {image_dir} have no row in {solution}, e.g. {unlabelled[:3]}"
        )
    synsets = solution.parent / KAGGLE_SYNSETS
    if synsets.is_file():
        classes = sorted(line.split()[0] for line in synsets.read_text().splitlines() if line.strip())
        source = f"{solution} + {synsets}"
    else:
        classes = sorted(set(wnid_of.values()))
        source = str(solution)
    return FlatVal(image_dir, images, [wnid_of[p.stem] for p in images], classes, source, LAYOUT_KAGGLE)
