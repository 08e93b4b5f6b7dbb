"""MMEB-V2's 18 video tasks read from tiny fixtures in VLM2Vec-V2's local layout: per task the annotation fields of
the reference's parser, its frame folder / video file per video, candidates, instructions and relevance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from evaluate.layouts.base import LayoutError
from evaluate.layouts.mmeb_v2 import (
    MMEB_V2_BY_NAME,
    MMEB_V2_TASKS,
    MOMENT_QUERY,
    MOMENTSEEKER_QUERY,
    MOMENTSEEKER_TARGET,
    MVBENCH_VIDEO_DIRS,
    SSV2_ROWS,
    VIDEO_CLASS_INSTRUCTION,
    VIDEO_LABELS_FILE,
    VIDEO_QA_PROMPT,
    VIDEO_RETRIEVAL_QUERY,
    VIDEO_TARGET,
    read_task,
)

QA = VIDEO_QA_PROMPT  # kept with its trailing space (the reference prompt)


def frames(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"frame_{i}.jpg")
    return folder


def video_file(path: Path) -> Path:
    """A stand-in video file: the readers only check that it exists (decoding is tested in test_vlm2vec_video)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def jsonl(root: Path, name: str, rows: list[dict]) -> None:
    path = root / MMEB_V2_BY_NAME[name].data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def media(root: Path, name: str) -> Path:
    return root / MMEB_V2_BY_NAME[name].media


def videos(root: Path, name: str) -> Path:
    return root / MMEB_V2_BY_NAME[name].videos


def texts(items) -> list:
    return [i.text for i in items]


def test_every_video_task_has_a_reader(tmp_path):
    for task in (t for t in MMEB_V2_TASKS if t.modality == "video"):
        with pytest.raises(LayoutError, match="not found"):
            read_task(tmp_path, task)  # no task's file exists: a clear error, never "not read"


def test_global_classification_ranks_rows_labels_then_the_label_list(tmp_path):
    jsonl(
        tmp_path,
        "UCF101",
        [{"video_id": "v1", "pos_text": "Kayaking"}, {"video_id": "v2", "pos_text": "Zzz"}],
    )
    frames(media(tmp_path, "UCF101") / "v1")
    video_file(videos(tmp_path, "UCF101") / "v2.mp4")  # no frames: the video file
    data = read_task(tmp_path, MMEB_V2_BY_NAME["UCF101"])
    fixed = json.loads(VIDEO_LABELS_FILE.read_text())["labels"]["UCF101"]
    assert len(fixed) == 101 and data.local is None
    # the rows' labels first (first seen first), then the reference's list without the ones seen
    assert texts(data.candidates) == ["Kayaking", "Zzz"] + [label for label in fixed if label != "Kayaking"]
    assert data.qrels == [{0: 1}, {1: 1}]
    assert [q.video for q in data.queries] == [
        media(tmp_path, "UCF101") / "v1",
        videos(tmp_path, "UCF101") / "v2.mp4",
    ]
    assert {q.instruction for q in data.queries} == {VIDEO_CLASS_INSTRUCTION["UCF101"]}
    sizes = {k: len(v) for k, v in json.loads(VIDEO_LABELS_FILE.read_text())["labels"].items()}
    assert sizes == {"Kinetics-700": 700, "UCF101": 101, "HMDB51": 51, "Breakfast": 10}


def test_ssv2_ranks_its_own_labels_first_1000_rows(tmp_path):
    rows = [
        {"video_id": i, "pos_text": "Opening x", "neg_text": ["Closing x", "Opening x"]} for i in range(1001)
    ]
    rows[0]["pos_text"], rows[0]["neg_text"] = "Folding x", ["Folding x", "Closing x"]
    jsonl(tmp_path, "SmthSmthV2", rows)
    for i in range(SSV2_ROWS):
        video_file(videos(tmp_path, "SmthSmthV2") / f"{i}.mp4")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["SmthSmthV2"])
    assert len(data.queries) == SSV2_ROWS and "first 1000 of 1001" in data.notes[0]
    assert texts(data.candidates) == ["Folding x", "Closing x", "Opening x"]
    assert data.local[:2] == [[0, 1], [1, 2]] and data.qrels[:2] == [{0: 1}, {2: 1}]
    assert (
        data.queries[0].instruction == VIDEO_CLASS_INSTRUCTION["SmthSmthV2"] and data.queries[0].text is None
    )
    jsonl(tmp_path, "SmthSmthV2", [{"video_id": 0, "pos_text": "a", "neg_text": ["b"]}])
    with pytest.raises(LayoutError, match="not among its neg_text"):
        read_task(tmp_path, MMEB_V2_BY_NAME["SmthSmthV2"])


RETRIEVAL = {
    # task: (row, video name, video file name, caption)
    "DiDeMo": (
        {"video": "some/dir/clip_a.mp4", "caption": "a man runs"},
        "clip_a",
        "clip_a.mp4",
        "a man runs",
    ),
    "VATEX": ({"videoID": "vx1", "enCap": ["first caption", "second"]}, "vx1", "vx1.mp4", "first caption"),
    "YouCook2": (
        {"id": "yc_7", "video_path": "val/abc.mp4", "sentence": "add salt"},
        "yc_7",
        "abc.mp4",
        "add salt",
    ),
    "MSR-VTT": (
        {"video_id": "video9", "video": "video9.mp4", "caption": ["a dog"]},
        "video9",
        "video9.mp4",
        "a dog",
    ),
}


@pytest.mark.parametrize("name", sorted(RETRIEVAL))
def test_caption_retrieval_fields_and_video_pool(tmp_path, name):
    row, video_name, file, caption = RETRIEVAL[name]
    jsonl(tmp_path, name, [row, row])  # a second caption of the same video: one candidate
    video_file(videos(tmp_path, name) / file)
    data = read_task(tmp_path, MMEB_V2_BY_NAME[name])
    assert [(q.text, q.instruction) for q in data.queries] == [(caption, VIDEO_RETRIEVAL_QUERY[name])] * 2
    assert [(c.video, c.instruction) for c in data.candidates] == [
        (videos(tmp_path, name) / file, VIDEO_TARGET)
    ]
    assert data.qrels == [{0: 1}, {0: 1}] and data.local is None
    frames(media(tmp_path, name) / video_name)  # extracted frames take precedence over the file
    assert (
        read_task(tmp_path, MMEB_V2_BY_NAME[name]).candidates[0].video == media(tmp_path, name) / video_name
    )


def test_nextqa_options_in_the_query_answers_as_candidates(tmp_path):
    row = {"video": 4010, "question": "why?", "answer": 2, "qid": 1, "type": "CW"}
    row |= {f"a{i}": f"ans{i}" for i in range(5)}
    jsonl(tmp_path, "NExTQA", [row])
    frames(media(tmp_path, "NExTQA") / "4010")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["NExTQA"])
    options = "\n".join(f"({letter}) ans{i}" for i, letter in enumerate("ABCDE"))
    assert data.queries[0].text == f"why?\nOptions:\n{options}" and data.queries[0].instruction == QA
    assert texts(data.candidates) == [f"ans{i}" for i in range(5)]
    assert data.local == [[0, 1, 2, 3, 4]] and data.qrels == [{2: 1}]


def test_egoschema_options_joined_and_stripped_of_their_letter(tmp_path):
    options = ["A. left", "B. right", "C. up"]
    rows = [
        {"video_idx": "ego1", "question": "Where? ", "answer": "1", "question_idx": "q", "option": options}
    ]
    jsonl(tmp_path, "EgoSchema", rows)
    video_file(videos(tmp_path, "EgoSchema") / "ego1.mp4")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["EgoSchema"])
    assert data.queries[0].text == "Where? A. left B. right C. up"
    assert data.queries[0].video_extraction == "step"  # the reference's video-QA extraction of a video file
    assert texts(data.candidates) == ["left", "right", "up"] and data.qrels == [{1: 1}]


def test_activitynetqa_yes_no(tmp_path):
    rows = [
        {"video_name": "abc", "question": "is it raining", "answer": a, "question_id": i}
        for i, a in enumerate(["no", "yes"])
    ]
    jsonl(tmp_path, "ActivityNetQA", rows)
    frames(media(tmp_path, "ActivityNetQA") / "v_abc")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["ActivityNetQA"])
    assert data.queries[0].text == "is it raining? (A) yes; (B) no."
    assert data.queries[0].video == media(tmp_path, "ActivityNetQA") / "v_abc"
    assert texts(data.candidates) == ["yes", "no"] and data.qrels == [{1: 1}, {0: 1}]


def test_mvbench_subset_files_and_video_folders(tmp_path):
    folder = tmp_path / MMEB_V2_BY_NAME["MVBench"].data
    folder.mkdir(parents=True)
    item = {"video": "c1.mp4", "question": "what next?", "candidates": ["sit", "run"], "answer": "run"}
    (folder / "action_sequence.json").write_text(json.dumps([item]))
    episodic = {"video": "tvqa_1", "question": "who?", "candidates": ["Ann", "Bo", "Cy"], "answer": "Ann"}
    (folder / "episodic_reasoning.json").write_text(json.dumps([episodic]))
    video_file(videos(tmp_path, "MVBench") / "star/Charades_v1_480/c1.mp4")
    frames(videos(tmp_path, "MVBench") / "tvqa/frames_fps3_hq/tvqa_1")  # a frame-folder subset
    data = read_task(tmp_path, MMEB_V2_BY_NAME["MVBench"])
    # the reference's subset order: episodic_reasoning first
    assert [q.video for q in data.queries] == [
        videos(tmp_path, "MVBench") / "tvqa/frames_fps3_hq/tvqa_1",
        videos(tmp_path, "MVBench") / "star/Charades_v1_480/c1.mp4",
    ]
    assert data.queries[1].text == "what next?\nOptions:\n(A) sit\n(B) run"
    assert texts(data.candidates) == ["(A) Ann", "(B) Bo", "(C) Cy", "(A) sit", "(B) run"]
    assert data.local == [[0, 1, 2], [3, 4]] and data.qrels == [{0: 1}, {4: 1}]
    absent = [s for s in MVBENCH_VIDEO_DIRS if s not in ("episodic_reasoning", "action_sequence")]
    assert data.notes == [f"subsets without a file (skipped, as the reference): {', '.join(absent)}"]
    frames(media(tmp_path, "MVBench") / "action_sequence/c1.mp4")  # extracted frames: FRAME_ROOT/SUBSET/VIDEO
    assert read_task(tmp_path, MMEB_V2_BY_NAME["MVBench"]).queries[1].video == (
        media(tmp_path, "MVBench") / "action_sequence/c1.mp4"
    )


@pytest.mark.parametrize("name", ["QVHighlight", "Charades-STA"])
def test_moment_retrieval_clip_folders(tmp_path, name):
    jsonl(tmp_path, name, [{"query": "a goal is scored", "video_path": "/abs/videos/match_3.mp4"}])
    base = media(tmp_path, name) / "match_3"
    for part in ("query", "negative_0", "positive_0", "negative_1"):
        frames(base / part, 3)
    (base / "notes.txt").write_text("files are not clips")
    data = read_task(tmp_path, MMEB_V2_BY_NAME[name])
    assert [(q.text, q.instruction, q.video) for q in data.queries] == [
        ("a goal is scored", MOMENT_QUERY, base / "query")
    ]
    assert [c.video for c in data.candidates] == [
        base / "negative_0",
        base / "negative_1",
        base / "positive_0",
    ]
    assert {c.instruction for c in data.candidates} == {VIDEO_TARGET}
    assert data.local == [[0, 1, 2]] and data.qrels == [{2: 1}]
    for path in (base / "negative_1").iterdir():
        path.unlink()
    with pytest.raises(LayoutError, match="no frames of a clip"):
        read_task(tmp_path, MMEB_V2_BY_NAME[name])


def test_momentseeker_text_image_and_video_queries(tmp_path):
    base = media(tmp_path, "MomentSeeker")
    clip = lambda p: {"output_path": p}  # noqa: E731
    rows = [
        {"query": "t", "input_frames": "", "positive_frames": [clip("m/p1.mp4")], "negative_frames": [clip("m/n1.mp4")]},
        {"query": "i", "input_frames": "img7.jpg", "positive_frames": [clip("m/p1.mp4"), clip("m/p2.mp4")],
         "negative_frames": []},
        {"query": "v", "input_frames": "src/q.mp4", "positive_frames": [clip("m/p2.mp4")], "negative_frames": []},
    ]  # fmt: skip
    jsonl(tmp_path, "MomentSeeker", rows)
    for name in ("m_p1", "m_n1", "m_p2", "src_q"):
        frames(base / "video_frames" / name, 3)
    Image.new("RGB", (8, 8)).save(base / "query_img7.jpg")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["MomentSeeker"])
    instructions = [MOMENTSEEKER_QUERY[k] for k in ("text", "image", "video")]
    assert [(q.text, q.instruction) for q in data.queries] == list(zip("tiv", instructions, strict=True))
    assert data.queries[1].image == base / "query_img7.jpg"
    # every frame of a folder, unsampled (the reference's load_frames)
    assert data.queries[2].video == tuple(base / "video_frames/src_q" / f"frame_{i}.jpg" for i in (1, 2, 3))
    assert [c.video[0].parent.name for c in data.candidates] == ["m_p1", "m_n1", "m_p2"]
    assert {c.instruction for c in data.candidates} == {MOMENTSEEKER_TARGET}
    assert data.local == [[0, 1], [0, 2], [2]] and data.qrels == [{0: 1}, {0: 1, 2: 1}, {2: 1}]


def test_missing_field_names_the_parser(tmp_path):
    jsonl(tmp_path, "VATEX", [{"videoID": "v"}])
    with pytest.raises(LayoutError, match="'vatex' parser.*enCap"):
        read_task(tmp_path, MMEB_V2_BY_NAME["VATEX"])


def test_frame_lists_are_embedded_unsampled_and_keyed_by_their_files(tmp_path):
    from evaluate import mmeb_v2
    from evaluate.layouts.mmeb_v2 import V2Input

    folder = frames(tmp_path / "clip", 5)
    listed = V2Input(instruction=MOMENTSEEKER_TARGET, video=tuple(sorted(folder.iterdir())))
    sampled = V2Input(instruction=MOMENTSEEKER_TARGET, video=folder)
    assert len(mmeb_v2._embed_input(listed, num_frames=2).video) == 5  # every listed frame
    assert len(mmeb_v2._embed_input(sampled, num_frames=2).video) == 2  # a folder: sampled to --num-frames
    key = mmeb_v2._key(listed, 2)
    assert key == mmeb_v2._key(listed, 8) and key != mmeb_v2._key(sampled, 2)


def test_youcook2_skips_rows_without_a_video_as_the_reference_does(tmp_path):
    rows = [
        {"id": "yc_1", "video_path": "val/a.mp4", "sentence": "add salt"},
        {"id": "yc_2", "video_path": "val/gone.mp4", "sentence": "stir"},
        {"id": "yc_3", "video_path": "val/c.mp4", "sentence": "serve"},
    ]
    jsonl(tmp_path, "YouCook2", rows)
    video_file(videos(tmp_path, "YouCook2") / "a.mp4")
    frames(media(tmp_path, "YouCook2") / "yc_3")
    data = read_task(tmp_path, MMEB_V2_BY_NAME["YouCook2"])
    assert [q.text for q in data.queries] == ["add salt", "serve"]
    assert [c.video for c in data.candidates] == [
        videos(tmp_path, "YouCook2") / "a.mp4",
        media(tmp_path, "YouCook2") / "yc_3",
    ]
    assert data.qrels == [{0: 1}, {1: 1}]
    assert data.notes == [
        "1 of 3 rows skipped, their video has neither frames nor a file (as the reference): yc_2"
    ]

    jsonl(tmp_path, "YouCook2", rows[1:2])
    with pytest.raises(LayoutError, match="none of its 1 rows"):
        read_task(tmp_path, MMEB_V2_BY_NAME["YouCook2"])


def test_a_missing_video_is_an_error_in_the_other_retrieval_tasks(tmp_path):
    jsonl(tmp_path, "VATEX", [{"videoID": "vx1", "enCap": ["a"]}, {"videoID": "vx2", "enCap": ["b"]}])
    video_file(videos(tmp_path, "VATEX") / "vx1.mp4")
    with pytest.raises(LayoutError, match="'vx2' has neither frames nor a video file"):
        read_task(tmp_path, MMEB_V2_BY_NAME["VATEX"])
