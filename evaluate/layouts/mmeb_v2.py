"""MMEB-V2's 78 tasks and their readers, in the local layout of TIGER-AI-Lab/VLM2Vec (main branch, V2).

The table follows the reference: task names, modalities and main metrics as ``experiments/report_score_v2.py``
spells them (its ``modality2dataset`` and ``modality2metric``, with the 24 visual-document tasks the leaderboard
scores, ``experiments/mmebv3_reproduction/configs/mmeb_v2_visdoc.yaml``), the files of each task as
``src/constant/dataset_hflocal_path.py`` places them under its data root, and the image / video-frame roots of
``experiments/public/eval/{image,video,visdoc}.yaml``. ``DIR`` (``--data``) is that root::

    DIR/image-query/NAME/*.parquet        image tasks: the instruction annotations (qry_inst, qry_text,
                                          qry_img_path, tgt_inst, tgt_text, tgt_img_path; positive first)
    DIR/image-tasks/MMEB/                 their images (qry_img_path / tgt_img_path are relative to it)
    DIR/video-tasks/data/FILE.jsonl       video tasks (k700.jsonl, msr-vtt.jsonl, video-mme.jsonl, ...;
                                          MVBench: mvbench/SUBSET.json)
    DIR/video-tasks/frames/.../VIDEO_ID/  extracted frames per video, or else
    DIR/video-tasks/videos/.../VIDEO.mp4  the video file (decoded in memory with PyAV; nothing is written)
    DIR/video-tasks/frames/video_mret/NAME/VIDEO/{query,positive*,negative*}/   moment retrieval clips (frames);
                                          MomentSeeker: .../MomentSeeker/video_frames/CLIP/ and query_FILE.jpg
    DIR/visdoc-tasks/data/CORPUS/{queries,corpus,qrels}/*.parquet   visdoc tasks (BEIR: query-id + query;
                                          corpus-id + image; query-id + corpus-id + score)
    DIR/visdoc-tasks/NAME/CORPUS_ID.png   page images, where present (else the corpus parquet's image column)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from core.video import VideoError, check_video_source, list_frames
from evaluate.layouts.base import Layout, LayoutError, Layouts

MODALITIES = ("image", "video", "visdoc")
MAIN_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg@5"}  # the reference: hit@1, ndcg_linear@5

IMAGE_QUERY_DIR = "image-query"
IMAGE_ROOT = "image-tasks/MMEB"
VIDEO_DATA_DIR = "video-tasks/data"
VISDOC_DATA_DIR = "visdoc-tasks/data"

LAYOUTS = Layouts(
    "mmeb --version 2",
    (
        Layout(
            "VLM2Vec-V2 local layout (DIR = its data root)",
            "DIR/image-query/NAME/*.parquet + DIR/image-tasks/MMEB/ (image tasks); "
            "DIR/video-tasks/data/FILE.jsonl + DIR/video-tasks/frames/.../VIDEO_ID/ or .../videos/ (video tasks); "
            "DIR/visdoc-tasks/data/CORPUS/{queries,corpus,qrels}/*.parquet + DIR/visdoc-tasks/NAME/ID.png "
            "(visual documents)",
        ),
    ),
    ("`python -m evaluate mmeb --version 2 --list` prints every task with its files",),
)


@dataclass(frozen=True)
class V2Task:
    """One MMEB-V2 task: where its files are, how it is read and scored."""

    name: str  # as the reference's score report spells it
    modality: str  # image, video or visdoc
    meta_task: str
    parser: str  # the reference's dataset_parser
    data: str  # annotation file or folder, relative to DIR
    media: str  # image root (image, visdoc) or frame root (video), relative to DIR
    videos: str = ""  # video files root (video tasks)
    scope: str = "local"  # local: each query ranks its own candidates; global: the whole candidate pool
    source_name: str = ""  # the reference's dataset_name where it differs (its instruction keys)

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.modality]


def _image(name: str, meta: str, parser: str) -> V2Task:
    return V2Task(name, "image", meta, parser, f"{IMAGE_QUERY_DIR}/{name}", IMAGE_ROOT)


def _video(
    name: str, meta: str, parser: str, file: str, kind: str, folder: str, scope: str, source: str = ""
) -> V2Task:
    return V2Task(
        name,
        "video",
        meta,
        parser,
        f"{VIDEO_DATA_DIR}/{file}",
        f"video-tasks/frames/{kind}/{folder}" if kind else f"video-tasks/frames/{folder}",
        f"video-tasks/videos/{kind}/{folder}" if kind else "",
        scope,
        source,
    )


def _visdoc(name: str, meta: str, parser: str, corpus: str, images: str) -> V2Task:
    return V2Task(
        name, "visdoc", meta, parser, f"{VISDOC_DATA_DIR}/{corpus}", f"visdoc-tasks/{images}", "", "global"
    )


_CLS = ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397")
_CLS += ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")
_VQA = ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA")
_VQA += ("TextVQA",)
_I2T = ("VisualNews_i2t", "MSCOCO_i2t")
_I2I = ("CIRR", "NIGHTS", "OVEN", "FashionIQ")
_RET = ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA")
_RET += ("FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS")
_VG = ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")


def _image_parser(name: str) -> str:
    return "image_i2t" if name in _I2T else "image_i2i_vg" if name in _I2I else "image_t2i"


_VIDORE_V1 = (
    ("arxivqa", "arxivqa_test_subsampled_beir"),
    ("docvqa", "docvqa_test_subsampled_beir"),
    ("infovqa", "infovqa_test_subsampled_beir"),
    ("tabfquad", "tabfquad_test_subsampled_beir"),
    ("tatdqa", "tatdqa_test_beir"),
    ("shiftproject", "shiftproject_test_beir"),
    ("syntheticDocQA_artificial_intelligence", "syntheticDocQA_artificial_intelligence_test_beir"),
    ("syntheticDocQA_energy", "syntheticDocQA_energy_test_beir"),
    ("syntheticDocQA_government_reports", "syntheticDocQA_government_reports_test_beir"),
    ("syntheticDocQA_healthcare_industry", "syntheticDocQA_healthcare_industry_test_beir"),
)
_VIDORE_V2 = (
    ("esg_reports_human_labeled_v2", "esg_reports_human_labeled_v2"),
    ("biomedical_lectures_v2_multilingual", "biomedical_lectures_v2"),
    ("economics_reports_v2_multilingual", "economics_reports_v2"),
    ("esg_reports_v2_multilingual", "esg_reports_v2"),
)
_VISRAG = ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")

MMEB_V2_TASKS: tuple[V2Task, ...] = (
    tuple(_image(n, "classification", "image_cls") for n in _CLS)
    + tuple(_image(n, "vqa", "image_qa") for n in _VQA)
    + tuple(_image(n, "retrieval", _image_parser(n)) for n in _RET)
    + tuple(_image(n, "grounding", "image_i2i_vg") for n in _VG)
    + (
        _video("DiDeMo", "retrieval", "didemo", "didemo.jsonl", "video_ret", "DiDeMo", "global"),
        _video("MSR-VTT", "retrieval", "msrvtt", "msr-vtt.jsonl", "video_ret", "MSR-VTT", "global"),
        _video("MSVD", "retrieval", "msvd", "msvd.jsonl", "video_ret", "MSVD", "global"),
        _video("VATEX", "retrieval", "vatex", "vatex.jsonl", "video_ret", "VATEX", "global"),
        _video("YouCook2", "retrieval", "youcook2", "youcook2-val.jsonl", "video_ret", "YouCook2", "global"),
        _video(
            "QVHighlight",
            "moment_retrieval",
            "moment_retrieval",
            "qvhighlight.jsonl",
            "video_mret",
            "QVHighlight",
            "local",
        ),  # noqa: E501
        _video(
            "Charades-STA",
            "moment_retrieval",
            "moment_retrieval",
            "charades_sta.jsonl",
            "video_mret",
            "Charades_STA",
            "local",
        ),  # noqa: E501
        _video(
            "MomentSeeker",
            "moment_retrieval",
            "momentseeker",
            "momentseeker_1k6.jsonl",
            "video_mret",
            "MomentSeeker",
            "local",
        ),  # noqa: E501
        _video(
            "K700",
            "classification",
            "video_classification",
            "k700.jsonl",
            "video_cls",
            "K700",
            "global",
            "Kinetics-700",
        ),  # noqa: E501
        _video("SmthSmthV2", "classification", "ssv2", "ssv2.jsonl", "video_cls", "SSv2", "local"),
        _video(
            "HMDB51",
            "classification",
            "video_classification",
            "hmdb51.jsonl",
            "video_cls",
            "HMDB51",
            "global",
        ),  # noqa: E501
        _video(
            "UCF101",
            "classification",
            "video_classification",
            "ucf101.jsonl",
            "video_cls",
            "UCF101",
            "global",
        ),  # noqa: E501
        _video(
            "Breakfast",
            "classification",
            "video_classification",
            "breakfast.jsonl",
            "video_cls",
            "Breakfast",
            "global",
        ),  # noqa: E501
        _video("MVBench", "vqa", "mvbench", "mvbench", "video_qa", "MVBench", "local"),
        _video("Video-MME", "vqa", "videomme", "video-mme.jsonl", "video_qa", "Video-MME", "local"),
        _video("NExTQA", "vqa", "nextqa", "nextqa.jsonl", "video_qa", "NExTQA", "local"),
        _video("EgoSchema", "vqa", "egoschema", "egoschema.jsonl", "video_qa", "EgoSchema", "local"),
        _video(
            "ActivityNetQA",
            "vqa",
            "activitynetqa",
            "activitynetqa.jsonl",
            "video_qa",
            "ActivityNetQA",
            "local",
        ),  # noqa: E501
    )
    + tuple(_visdoc(f"ViDoRe_{n}", "ViDoRe-V1", "vidore", corpus, f"ViDoRe_{n}") for n, corpus in _VIDORE_V1)
    + tuple(_visdoc(f"ViDoRe_{n}", "ViDoRe-V2", "vidore", corpus, n) for n, corpus in _VIDORE_V2)
    + tuple(
        _visdoc(f"VisRAG_{n}", "VisRAG", "visrag", f"VisRAG-Ret-Test-{n}", f"VisRAG_{n}") for n in _VISRAG
    )
    + (
        _visdoc("ViDoSeek-page", "VisDoc-OOD", "vidore", "ViDoSeek-page", "ViDoSeek-page"),
        _visdoc("ViDoSeek-doc", "VisDoc-OOD", "vidore", "ViDoSeek", "ViDoSeek-doc"),
        _visdoc("MMLongBench-page", "VisDoc-OOD", "vidore", "MMLongBench", "MMLongBench-page"),
        _visdoc("MMLongBench-doc", "VisDoc-OOD", "vidore", "MMLongBench-doc", "MMLongBench-doc"),
    )
)
MMEB_V2_BY_NAME = {task.name: task for task in MMEB_V2_TASKS}

# The reference's instructions (its dataset parsers' TASK_INST_QRY / TASK_INST_TGT, DATASET_INSTRUCTION, ...).
VIDEO_CLASS_INSTRUCTION = {
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
VIDEO_RETRIEVAL_QUERY = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "VATEX": "Select a video that fits the description provided:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
}
VIDEO_TARGET = "Understand the content of the provided video."
VIDEO_QA_PROMPT = (
    "Given a video and a question, select the most accurate answer from the provided candidates. Return only the "
    "exact text of your chosen answer. Question: "
)
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY = {
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}
MOMENTSEEKER_TARGET = "Understand the content of the provided video clip."
SSV2_ROWS = 1000  # the reference's eval config scores the first 1000 rows of ssv2.jsonl
# MVBench: the reference's 20 subsets (DIR/video-tasks/data/mvbench/SUBSET.json) and each one's video folder
# under the video root (a folder of frames for episodic_reasoning, video files for the others).
MVBENCH_VIDEO_DIRS = {
    "episodic_reasoning": "tvqa/frames_fps3_hq",
    "action_sequence": "star/Charades_v1_480",
    "action_prediction": "star/Charades_v1_480",
    "action_antonym": "ssv2_video",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "unexpected_action": "FunQA_test/test",
    "object_existence": "clevrer/video_validation",
    "object_interaction": "star/Charades_v1_480",
    "object_shuffle": "perception/videos",
    "moving_direction": "clevrer/video_validation",
    "action_localization": "sta/sta_video",
    "scene_transition": "scene_qa/video",
    "action_count": "perception/videos",
    "moving_count": "clevrer/video_validation",
    "moving_attribute": "clevrer/video_validation",
    "state_change": "perception/videos",
    "fine_grained_pose": "nturgbd",
    "character_order": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "counterfactual_inference": "clevrer/video_validation",
}
VIDEO_LABELS_FILE = Path(__file__).with_name("mmeb_v2_video_labels.json")
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."
IMAGE_TOKEN = "<|image_1|>"

# ------------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class V2Input:
    """One query or candidate: text, instruction, and an image (a file, or PNG bytes of a corpus parquet) or a
    video (a frame folder or a video file, sampled to ``--num-frames``; or frame files taken as they are)."""

    text: str | None = None
    instruction: str | None = None
    image: Path | bytes | None = None
    video: Path | tuple[Path, ...] | None = None
    video_extraction: str = "spread"  # how a video file's frames are extracted (core.video.EXTRACTIONS)


@dataclass
class V2TaskData:
    """Queries, the candidate pool and the graded relevance of one task.

    ``qrels[i]`` maps candidate indices to relevance grades (> 0 relevant) for query ``i``; ``local[i]`` is the
    list of candidates query ``i`` is ranked among (its own candidates, the positive not necessarily first), or
    ``local`` is None and every query ranks the whole pool.
    """

    task: V2Task
    queries: list[V2Input]
    candidates: list[V2Input]
    qrels: list[dict[int, int]]
    local: list[list[int]] | None = None
    notes: list[str] = field(default_factory=list)


class _Pool:
    """Candidates deduplicated by a key (the reference's ``cand_names``)."""

    def __init__(self) -> None:
        self.items: list[V2Input] = []
        self.index: dict[object, int] = {}

    def add(self, key: object, item: V2Input) -> int:
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(item)
        return self.index[key]


def _clean(text: object) -> str | None:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return None
    value = str(text).replace(IMAGE_TOKEN, "").strip()
    return value or None


def _parquet(folder: Path, task: V2Task) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise LAYOUTS.error(f"{task.name}: no parquet files in {folder}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _require(table: pd.DataFrame, columns: Sequence[str], where: Path, task: V2Task) -> None:
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise LAYOUTS.error(f"{task.name}: {where} lacks columns {missing} (has {list(table.columns)})")


# ------------------------------------------------------------------------------------------------------- images


def read_image_task(root: Path, task: V2Task) -> V2TaskData:
    """An image task: each query ranks its own candidates, the first of which is the positive."""
    table = _parquet(root / task.data, task)
    _require(table, ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path"), root / task.data, task)
    images = root / task.media
    n = len(table)
    qry_inst = table["qry_inst"] if "qry_inst" in table.columns else [None] * n
    tgt_inst = table["tgt_inst"] if "tgt_inst" in table.columns else [None] * n
    pool, queries, local, qrels = _Pool(), [], [], []

    def image_path(value: object) -> Path | None:
        return images / str(value) if value is not None and str(value).strip() else None

    for row, (inst, text, path, t_inst, t_texts, t_paths) in enumerate(
        zip(
            qry_inst,
            table["qry_text"],
            table["qry_img_path"],
            tgt_inst,
            table["tgt_text"],
            table["tgt_img_path"],
            strict=True,
        )
    ):
        query = V2Input(_clean(text), _clean(inst), image_path(path))
        if query.text is None and query.instruction is None and query.image is None:
            raise LAYOUTS.error(f"{task.name} row {row}: a query without text and image")
        t_texts, t_paths = list(t_texts), list(t_paths)
        if len(t_texts) != len(t_paths) or not t_texts:
            raise LAYOUTS.error(f"{task.name} row {row}: tgt_text and tgt_img_path need the same length >= 1")
        ids = []
        for t_text, t_path in zip(t_texts, t_paths, strict=True):
            item = V2Input(_clean(t_text), _clean(t_inst), image_path(t_path))
            ids.append(pool.add(item, item))
        queries.append(query)
        local.append(ids)
        qrels.append({ids[0]: 1})
    missing = sorted(
        {str(i.image) for i in queries + pool.items if isinstance(i.image, Path) and not i.image.is_file()}
    )
    if missing:
        raise LAYOUTS.error(
            f"{task.name}: {len(missing)} image(s) not found under {images}, e.g. {missing[0]}"
        )
    return V2TaskData(task, queries, pool.items, qrels, local)


# ------------------------------------------------------------------------------------------------------- videos
#
# One reader per reference parser (src/data/eval_dataset/*_dataset.py): its annotation fields, the same frame
# folder (FRAME_ROOT/NAME) or video file (VIDEO_ROOT/FILE) per video, the same candidates and instructions. A
# local task ranks each query's own candidates, a global one the task's whole pool, which, as the reference's
# generate_cand_dataset builds it, holds every row's candidates (deduplicated by name, first seen first) and
# then the entries of a fixed corpus (video classification: the label list) not seen yet.


def _jsonl(path: Path, task: V2Task) -> list[dict]:
    if not path.is_file():
        raise LAYOUTS.error(f"{task.name}: {path} not found")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _first_video(task: V2Task, options: Sequence[Path], video_id: str) -> Path:
    """The first of ``options`` that is a folder holding frames or a video file (the reference reads the extracted
    frames when there are some, else the video file)."""
    for candidate in options:
        try:
            check_video_source(candidate)
        except VideoError:
            continue
        return candidate
    raise LAYOUTS.error(
        f"{task.name}: video {video_id!r} has neither frames nor a video file at {', '.join(map(str, options))}"
    )


def _video_source(root: Path, task: V2Task, video_id: str, file: str | None = None) -> Path:
    """FRAME_ROOT/VIDEO_ID when it holds frames, else VIDEO_ROOT/FILE (default ``VIDEO_ID.mp4``)."""
    options = [root / task.media / video_id]
    if task.videos:
        options.append(root / task.videos / (file or f"{video_id}.mp4"))
    return _first_video(task, options, video_id)


def _fixed_labels(dataset_name: str) -> list[str]:
    """The reference's label list of a video classification task (``VIDEOCLS_LABEL_MAPPING``)."""
    return json.loads(VIDEO_LABELS_FILE.read_text(encoding="utf-8"))["labels"][dataset_name]


def _video_classification(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """K700, UCF101, HMDB51, Breakfast: the video ranks every label (the rows' labels, then the label list)."""
    name = task.source_name or task.name
    pool, queries, qrels = _Pool(), [], []
    for r in rows:
        label = str(r["pos_text"])
        video = _video_source(root, task, str(r["video_id"]))
        queries.append(V2Input(instruction=VIDEO_CLASS_INSTRUCTION[name], video=video))
        qrels.append({pool.add(label, V2Input(text=label)): 1})
    for label in _fixed_labels(name):
        pool.add(label, V2Input(text=label))
    return V2TaskData(task, queries, pool.items, qrels, None)


def _ssv2(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """SmthSmthV2 (first 1000 rows): the video ranks its own candidate labels ``neg_text``, ``pos_text`` among
    them."""
    pool, queries, local, qrels = _Pool(), [], [], []
    for line, r in enumerate(rows[:SSV2_ROWS]):
        labels, positive = [str(t) for t in r["neg_text"]], str(r["pos_text"])
        if positive not in labels:
            raise LAYOUTS.error(f"{task.name}: row {line}: pos_text {positive!r} is not among its neg_text")
        video = _video_source(root, task, str(r["video_id"]))
        queries.append(V2Input(instruction=VIDEO_CLASS_INSTRUCTION[task.name], video=video))
        local.append([pool.add(t, V2Input(text=t)) for t in labels])
        qrels.append({pool.index[positive]: 1})
    notes = [f"the first {SSV2_ROWS} of {len(rows)} rows, as the reference"] if len(rows) > SSV2_ROWS else []
    return V2TaskData(task, queries, pool.items, qrels, local, notes)


def _retrieval_fields(task: V2Task, r: dict) -> tuple[str, str, str]:
    """(video name, video file name, caption) of one row, in each parser's fields."""
    if task.parser == "didemo":
        path = Path(str(r["video"]))
        return path.stem, path.name, str(r["caption"])
    if task.parser == "vatex":
        return str(r["videoID"]), f"{r['videoID']}.mp4", str(r["enCap"][0])
    if task.parser == "youcook2":
        return str(r["id"]), Path(str(r["video_path"])).name, str(r["sentence"])
    caption = r["caption"][0] if isinstance(r["caption"], list) else r["caption"]  # msrvtt, msvd
    return str(r["video_id"]), str(r.get("video") or f"{r['video_id']}.mp4"), str(caption)


def _caption_retrieval(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2: the caption ranks every video of the task.

    A YouCook2 row whose video has neither frames nor a file is skipped, as the reference's parser skips it (and
    named in the notes); in the other tasks a missing video is an error, as it is in the reference."""
    pool, queries, qrels, missing = _Pool(), [], [], []
    for r in rows:
        name, file, caption = _retrieval_fields(task, r)
        try:
            source = _video_source(root, task, name, file)
        except LayoutError:
            if task.parser != "youcook2":
                raise
            missing.append(name)
            continue
        video = V2Input(instruction=VIDEO_TARGET, video=source)
        queries.append(V2Input(text=caption, instruction=VIDEO_RETRIEVAL_QUERY[task.name]))
        qrels.append({pool.add(name, video): 1})
    if missing and not queries:
        raise LAYOUTS.error(
            f"{task.name}: none of its {len(rows)} rows has its video's frames or file under {root}"
        )
    notes = []
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        notes.append(
            f"{len(missing)} of {len(rows)} rows skipped, their video has neither frames nor a file "
            f"(as the reference): {shown}"
        )
    return V2TaskData(task, queries, pool.items, qrels, None, notes)


def _options_text(question: str, candidates: Sequence[str]) -> tuple[str, list[str]]:
    """The reference's ``qa_template``: the question, ``Options:`` and ``(A) ...`` lines; and those options."""
    options = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates)]
    listed = "\n".join(options)
    return f"{question}\nOptions:\n{listed}".rstrip(), options


def _strip_letter(option: str) -> str:
    """``A. text`` -> ``text``, the reference's ``o[o.find('. '):].strip('. ')`` (Video-MME, EgoSchema)."""
    return option[option.find(". ") :].strip(". ")


def _qa_query(text: str, video: Path) -> V2Input:
    """A video-QA query; a video file's frames are extracted at the reference's fixed step, as its video-QA
    parsers (Video-MME, NExTQA, EgoSchema, MVBench, ActivityNetQA) extract them. The prompt keeps its trailing
    space, so a VLM2Vec model's reference prompt is the reference's ``TOKEN PROMPT QUESTION`` exactly (two spaces
    after ``Question:``); two-tower models embed the instruction and the text stripped, joined by one space."""
    return V2Input(text=text, instruction=VIDEO_QA_PROMPT, video=video, video_extraction="step")


def _video_qa_mme(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    letters = ["A", "B", "C", "D"]
    pool, queries, local, qrels = _Pool(), [], [], []
    for r in rows:
        options = [str(o) for o in r["options"]]
        video = _video_source(root, task, str(r["videoID"]))
        queries.append(_qa_query(str(r["question"]) + "\n" + "\n".join(options), video))
        ids = [pool.add(_strip_letter(o), V2Input(text=_strip_letter(o))) for o in options]
        local.append(ids)
        qrels.append({ids[letters.index(str(r["answer"]))]: 1})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _nextqa(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """NExTQA: five answers ``a0``..``a4`` listed as options in the query; ``answer`` is the index."""
    pool, queries, local, qrels = _Pool(), [], [], []
    for r in rows:
        answers = [str(r[f"a{i}"]) for i in range(5)]
        text, _ = _options_text(str(r["question"]), answers)
        queries.append(_qa_query(text, _video_source(root, task, str(r["video"]))))
        ids = [pool.add(a, V2Input(text=a)) for a in answers]
        local.append(ids)
        qrels.append({ids[int(r["answer"])]: 1})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _egoschema(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """EgoSchema: the question followed by its options (``option``, joined by spaces, as the reference);
    candidates are the options without their letter; ``answer`` is the index."""
    pool, queries, local, qrels = _Pool(), [], [], []
    for r in rows:
        options = [str(o) for o in r["option"]]
        video = _video_source(root, task, str(r["video_idx"]))
        queries.append(_qa_query(str(r["question"]) + " ".join(options), video))
        ids = [pool.add(o, V2Input(text=_strip_letter(o))) for o in options]
        local.append(ids)
        qrels.append({ids[int(r["answer"])]: 1})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _mvbench_rows(root: Path, task: V2Task) -> tuple[list[dict], list[str]]:
    """The rows of DIR/video-tasks/data/mvbench/SUBSET.json for the 20 subsets, each tagged with its subset;
    and the subsets whose file is absent (skipped, as the reference does)."""
    folder = root / task.data
    if not folder.is_dir():
        raise LAYOUTS.error(f"{task.name}: {folder} not found (one SUBSET.json per MVBench subset)")
    rows, missing = [], []
    for subset in MVBENCH_VIDEO_DIRS:
        path = folder / f"{subset}.json"
        if not path.is_file():
            missing.append(subset)
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        rows += [{**item, "subset": subset} for item in (data if isinstance(data, list) else [data])]
    return rows, missing


def _mvbench(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """MVBench: the options ``(A) ...`` are the candidates; frames FRAME_ROOT/SUBSET/VIDEO, else the subset's
    video file (or frame folder) under the video root."""
    pool, queries, local, qrels = _Pool(), [], [], []
    for line, r in enumerate(rows):
        candidates, answer = [str(c) for c in r["candidates"]], str(r["answer"])
        if answer not in candidates:
            raise LAYOUTS.error(
                f"{task.name}: row {line} ({r['subset']}): answer {answer!r} not in candidates"
            )
        subset, name = r["subset"], str(r["video"])
        options = [root / task.media / subset / name, root / task.videos / MVBENCH_VIDEO_DIRS[subset] / name]
        text, labelled = _options_text(str(r["question"]), candidates)
        queries.append(_qa_query(text, _first_video(task, options, f"{subset}/{name}")))
        ids = [pool.add(o, V2Input(text=o)) for o in labelled]
        local.append(ids)
        qrels.append({ids[max(i for i, c in enumerate(candidates) if c == answer)]: 1})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _activitynetqa(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """ActivityNetQA (yes/no questions): frames FRAME_ROOT/v_NAME, video VIDEO_ROOT/v_NAME.mp4."""
    pool, queries, local, qrels = _Pool(), [], [], []
    ids = [pool.add(o, V2Input(text=o)) for o in ("yes", "no")]
    for line, r in enumerate(rows):
        if r["answer"] not in ("yes", "no"):
            raise LAYOUTS.error(f"{task.name}: row {line}: answer {r['answer']!r} is not yes / no")
        video = _video_source(root, task, f"v_{r['video_name']}")
        queries.append(_qa_query(str(r["question"]) + "? (A) yes; (B) no.", video))
        local.append(ids)
        qrels.append({ids[("yes", "no").index(r["answer"])]: 1})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _frames_folder(task: V2Task, folder: Path, what: str) -> Path:
    if not folder.is_dir() or not list_frames(folder):
        raise LAYOUTS.error(f"{task.name}: no frames of {what} at {folder} (pre-extracted frames are read)")
    return folder


def _moment_retrieval(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """QVHighlight, Charades-STA: FRAME_ROOT/VIDEO_NAME/ holds ``query/`` (the query video's frames) and one
    folder of frames per candidate clip, the relevant ones named ``positive*``."""
    pool, queries, local, qrels = _Pool(), [], [], []
    for r in rows:
        name = Path(str(r["video_path"])).stem
        folder = root / task.media / name
        query_frames = _frames_folder(task, folder / "query", f"the query video {name!r}")
        clips = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "query")
        positives = [clip for clip in clips if clip.name.startswith("positive")]
        if not positives:
            raise LAYOUTS.error(f"{task.name}: {folder} has no positive* clip folder")
        ids = [
            pool.add(str(clip), V2Input(instruction=VIDEO_TARGET, video=_frames_folder(task, clip, "a clip")))
            for clip in clips
        ]
        queries.append(V2Input(text=str(r["query"]), instruction=MOMENT_QUERY, video=query_frames))
        local.append(ids)
        qrels.append({pool.index[str(clip)]: 1 for clip in positives})
    return V2TaskData(task, queries, pool.items, qrels, local)


def _all_frames(task: V2Task, folder: Path, what: str) -> tuple[Path, ...]:
    """Every frame of a folder, unsampled (the reference's ``load_frames``, which MomentSeeker uses)."""
    return tuple(list_frames(_frames_folder(task, folder, what)))


def _clip_folder_name(path: str) -> str:
    return path.replace("/", "_").split(".mp4")[0]


def _momentseeker(root: Path, task: V2Task, rows: list[dict]) -> V2TaskData:
    """MomentSeeker: a text, text + image (FRAME_ROOT/query_FILE.jpg) or text + video query (``input_frames``);
    the clips of ``positive_frames`` and ``negative_frames`` as FRAME_ROOT/video_frames/PATH_WITH_UNDERSCORES/."""
    frames = root / task.media / "video_frames"
    pool, queries, local, qrels = _Pool(), [], [], []
    for line, r in enumerate(rows):
        text, given = str(r["query"]), str(r["input_frames"] or "")
        if given.endswith(".mp4"):
            video = _all_frames(task, frames / _clip_folder_name(given), f"the query video {given!r}")
            query = V2Input(text=text, instruction=MOMENTSEEKER_QUERY["video"], video=video)
        elif given.endswith(".jpg"):
            image = root / task.media / f"query_{given}"
            if not image.is_file():
                raise LAYOUTS.error(f"{task.name}: row {line}: query image {image} not found")
            query = V2Input(text=text, instruction=MOMENTSEEKER_QUERY["image"], image=image)
        else:
            query = V2Input(text=text, instruction=MOMENTSEEKER_QUERY["text"])
        positives = [str(entry["output_path"]) for entry in r["positive_frames"]]
        negatives = [str(entry["output_path"]) for entry in r["negative_frames"]]
        if not positives:
            raise LAYOUTS.error(f"{task.name}: row {line} has no positive_frames")
        ids = []
        for path in positives + negatives:
            folder = frames / _clip_folder_name(path)
            clip = V2Input(instruction=MOMENTSEEKER_TARGET, video=_all_frames(task, folder, f"clip {path!r}"))
            ids.append(pool.add(str(folder), clip))
        queries.append(query)
        local.append(ids)
        qrels.append({i: 1 for i in ids[: len(positives)]})
    return V2TaskData(task, queries, pool.items, qrels, local)


VIDEO_READERS = {
    "video_classification": _video_classification,
    "ssv2": _ssv2,
    "msrvtt": _caption_retrieval,
    "msvd": _caption_retrieval,
    "didemo": _caption_retrieval,
    "vatex": _caption_retrieval,
    "youcook2": _caption_retrieval,
    "videomme": _video_qa_mme,
    "nextqa": _nextqa,
    "egoschema": _egoschema,
    "mvbench": _mvbench,
    "activitynetqa": _activitynetqa,
    "moment_retrieval": _moment_retrieval,
    "momentseeker": _momentseeker,
}


def read_video_task(root: Path, task: V2Task) -> V2TaskData:
    notes: list[str] = []
    if task.parser == "mvbench":
        rows, missing = _mvbench_rows(root, task)
        if missing:
            notes.append(f"subsets without a file (skipped, as the reference): {', '.join(missing)}")
    else:
        rows = _jsonl(root / task.data, task)
    if not rows:
        raise LAYOUTS.error(f"{task.name}: {root / task.data} has no rows")
    try:
        data = VIDEO_READERS[task.parser](root, task, rows)
    except (KeyError, IndexError, TypeError) as error:
        raise LAYOUTS.error(
            f"{task.name}: a row of {root / task.data} lacks a field or holds a wrong value for the "
            f"reference's {task.parser!r} parser ({type(error).__name__}: {error})"
        ) from error
    data.notes = notes + data.notes
    return data


# --------------------------------------------------------------------------------------------- visual documents


def _page_name(task: V2Task, corpus_id: str) -> str:
    """The page image file name the reference writes: ``ID.png`` (ViDoRe), a shortened, hashed name (VisRAG)."""
    if task.parser != "visrag":
        return f"{corpus_id}.png"
    base, ext = os.path.splitext(corpus_id)
    return base[:50] + "_" + hashlib.md5(corpus_id.encode("utf-8")).hexdigest()[:8] + ext


def _image_bytes(value: object) -> bytes | None:
    if isinstance(value, dict):
        return value.get("bytes")
    if isinstance(value, bytes):
        return value
    return None


def read_visdoc_task(root: Path, task: V2Task) -> V2TaskData:
    """A visual-document task: text queries rank every page of the corpus; graded relevance from the qrels (a
    query-document pair listed twice keeps its highest grade; grades <= 0 and queries without a relevant page
    are dropped, as the reference's ``load_qrels_mapping``)."""
    base = root / task.data
    queries_t = _parquet(base / "queries", task)
    corpus_t = _parquet(base / "corpus", task)
    qrels_t = _parquet(base / "qrels", task)
    _require(queries_t, ("query-id", "query"), base / "queries", task)
    _require(corpus_t, ("corpus-id",), base / "corpus", task)
    _require(qrels_t, ("query-id", "corpus-id", "score"), base / "qrels", task)
    graded: dict[str, dict[str, int]] = {}
    for qid, cid, score in zip(qrels_t["query-id"], qrels_t["corpus-id"], qrels_t["score"], strict=True):
        if score > 0:
            docs = graded.setdefault(str(qid), {})
            docs[str(cid)] = max(docs.get(str(cid), 0), int(score))
    pages = root / task.media
    pool, missing = _Pool(), []
    images = corpus_t["image"] if "image" in corpus_t.columns else [None] * len(corpus_t)
    for cid, image in zip(corpus_t["corpus-id"], images, strict=True):
        path = pages / _page_name(task, str(cid))
        source: Path | bytes | None = path if path.is_file() else _image_bytes(image)
        if source is None:
            missing.append(str(path))
        pool.add(str(cid), V2Input(instruction=VISDOC_TARGET, image=source))
    if missing:
        raise LAYOUTS.error(
            f"{task.name}: {len(missing)} page(s) without an image file or image bytes, e.g. {missing[0]}"
        )
    queries, qrels, unknown = [], [], []
    for qid, text in zip(queries_t["query-id"], queries_t["query"], strict=True):
        docs = graded.get(str(qid))
        if not docs:
            continue
        absent = [d for d in docs if d not in pool.index]
        unknown += absent
        queries.append(V2Input(text=str(text), instruction=VISDOC_QUERY))
        qrels.append({pool.index[d]: g for d, g in docs.items() if d in pool.index})
    if unknown:
        raise LAYOUTS.error(
            f"{task.name}: qrels name {len(unknown)} page(s) not in the corpus, e.g. {unknown[0]}"
        )
    if not queries:
        raise LAYOUTS.error(f"{task.name}: no query has a relevant page in {base / 'qrels'}")
    return V2TaskData(task, queries, pool.items, qrels, None)


def read_task(root: str | Path, task: V2Task) -> V2TaskData:
    """Read and validate one task (every file it needs) before any encoding."""
    root = Path(root)
    if task.modality == "image":
        return read_image_task(root, task)
    if task.modality == "video":
        return read_video_task(root, task)
    return read_visdoc_task(root, task)


def task_present(root: str | Path, task: V2Task) -> bool:
    """Whether ``task``'s annotation file or folder exists under ``root``."""
    return (Path(root) / task.data).exists()


def open_page(source: Path | bytes) -> Image.Image:
    if isinstance(source, bytes):
        with Image.open(io.BytesIO(source)) as image:
            return image.convert("RGB")
    with Image.open(source) as image:
        return image.convert("RGB")


__all__ = [
    "LAYOUTS",
    "MMEB_V2_BY_NAME",
    "MMEB_V2_TASKS",
    "MODALITIES",
    "LayoutError",
    "V2Input",
    "V2Task",
    "V2TaskData",
    "open_page",
    "read_task",
    "task_present",
]
