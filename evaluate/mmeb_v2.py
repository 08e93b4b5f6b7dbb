"""``python -m evaluate mmeb --version 2``: MMEB-V2's 78 tasks (image, video, visual documents), scored as the
reference scores them, with per-modality, per-meta-task and overall means and, where a whole modality was run,
the published numbers beside them.

Every task is ranked with :func:`core.ir_metrics.ranking_metrics` (pytrec_eval): each query ranks its own
candidates (``local`` tasks) or the whole candidate pool of the task (``global``: video classification against
every label, video retrieval against every video, visual documents against the whole corpus, NDCG with the
linear gain of the qrels' grades). The main metric is hit@1 for image and video tasks and NDCG@5 for visual
documents, in percent; a modality's mean, and the overall mean, are unweighted means over the tasks run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.fingerprint import file_stamp
from core.ir_metrics import ranking_metrics
from core.protocol import EmbeddingModel, EmbedInput, encode_inputs
from core.video import DEFAULT_NUM_FRAMES, load_video, sample_frame_paths
from evaluate.encoding import encode_sharded
from evaluate.layouts.mmeb_v2 import (
    LAYOUTS,
    MMEB_V2_BY_NAME,
    MMEB_V2_TASKS,
    MODALITIES,
    V2Input,
    V2TaskData,
    open_page,
    read_task,
    task_present,
)
from evaluate.references import MMEB_BY_NAME, MMEB_DATASETS, MMEB_V2_REFERENCES
from evaluate.tasks import EncodeSettings, TaskResult

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
RUN_DEPTH = 100  # candidates per query a global task hands to the ranking metrics (exact for k <= 100)


# ------------------------------------------------------------------------------------------------------ encoding


def _key(item: V2Input, num_frames: int) -> str:
    """Cache key of one input: its texts, and the stamp of its image file / bytes or of its sampled frames."""
    if isinstance(item.image, bytes):
        media = "png:" + hashlib.sha256(item.image).hexdigest()
    elif item.image is not None:
        media = file_stamp(item.image)
    elif isinstance(item.video, tuple):
        media = "frames:" + ";".join(file_stamp(p) for p in item.video)
    elif item.video is not None and item.video.is_dir():
        media = "frames:" + ";".join(file_stamp(p) for p in sample_frame_paths(item.video, num_frames))
    elif item.video is not None:
        media = f"video:{num_frames}:{item.video_extraction}:{file_stamp(item.video)}"
    else:
        media = ""
    return f"{item.instruction or ''}\x1f{item.text or ''}\x1f{media}"


def _embed_input(item: V2Input, num_frames: int) -> EmbedInput:
    image = open_page(item.image) if item.image is not None else None
    video = load_video(item.video, num_frames, item.video_extraction) if item.video is not None else None
    text = item.text if item.text is not None or image is not None or video is not None else ""
    return EmbedInput(text=text, image=image, instruction=item.instruction, video=video)


def encode_items(
    model: EmbeddingModel, items: Sequence[V2Input], enc: EncodeSettings, num_frames: int, desc: str
) -> torch.Tensor:
    """``[N, D]`` unit embeddings of queries or candidates (videos as ``num_frames`` frames), cached; under
    torchrun each rank encodes its shard of whole batches (:func:`evaluate.encoding.encode_sharded`)."""
    keys = [_key(item, num_frames) for item in items]

    def compute(start: int, end: int) -> torch.Tensor:
        out = []
        firsts = tqdm(range(start, end, enc.batch_size), desc=f"encode {desc}", unit="batch")
        for first in firsts:
            batch = [
                _embed_input(item, num_frames) for item in items[first : min(end, first + enc.batch_size)]
            ]
            out.append(encode_inputs(model, batch).float().cpu())
        return torch.cat(out)

    return encode_sharded(enc.cache, "mmeb-v2", keys, compute, enc.batch_size)


# ------------------------------------------------------------------------------------------------------- scoring


def task_run(data: V2TaskData, scores: torch.Tensor) -> dict[str, dict[str, float]]:
    """The ranked candidates of each query (ids = candidate indices as strings) with their scores: its own
    candidates (local tasks) or the best :data:`RUN_DEPTH` of the pool (global tasks)."""
    run: dict[str, dict[str, float]] = {}
    if data.local is not None:
        for query, ids in enumerate(data.local):
            values = scores[query, ids].tolist()
            run[str(query)] = {str(c): v for c, v in zip(ids, values, strict=True)}
        return run
    depth = min(RUN_DEPTH, scores.shape[1])
    top = torch.topk(scores, depth, dim=1)
    for query, (values, ids) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
        run[str(query)] = {str(c): v for c, v in zip(ids, values, strict=True)}
    return run


def score_task(
    model: EmbeddingModel, data: V2TaskData, enc: EncodeSettings, num_frames: int
) -> dict[str, float]:
    """hit@k, ndcg@k, mrr and map of one task, in percent."""
    name = data.task.name
    queries = encode_items(model, data.queries, enc, num_frames, f"{name} queries")
    candidates = encode_items(model, data.candidates, enc, num_frames, f"{name} candidates")
    scores = queries.double() @ candidates.double().T
    qrels = {str(q): {str(c): g for c, g in docs.items()} for q, docs in enumerate(data.qrels)}
    metrics = ranking_metrics(qrels, task_run(data, scores), KS)
    return {metric: 100.0 * value for metric, value in metrics.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def aggregate(main: dict[str, float]) -> dict[str, float]:
    """Means of the tasks' main scores: per modality, per (modality, meta-task) as ``MODALITY/META``, and
    ``overall`` (over every task run)."""
    unknown = sorted(set(main) - set(MMEB_V2_BY_NAME))
    if unknown:
        raise ValueError(f"not MMEB-V2 tasks: {unknown}")
    metrics: dict[str, float] = {}
    for modality in MODALITIES:
        names = [t.name for t in MMEB_V2_TASKS if t.modality == modality and t.name in main]
        if names:
            metrics[modality] = _mean([main[n] for n in names])
    groups: dict[str, list[float]] = {}
    for task in MMEB_V2_TASKS:
        if task.name in main:
            groups.setdefault(f"{task.modality}/{task.meta_task}", []).append(main[task.name])
    metrics |= {group: _mean(values) for group, values in groups.items()}
    metrics["overall"] = _mean(list(main.values()))
    return metrics


def published_beside(tasks_run: Sequence[str]) -> dict[str, dict[str, float]]:
    """The published numbers that may stand beside a run: a modality's mean only when all its tasks were run,
    ``overall`` only when all 78 were."""
    done = set(tasks_run)
    complete = {m for m in MODALITIES if all(t.name in done for t in MMEB_V2_TASKS if t.modality == m)}
    if complete == set(MODALITIES):
        complete.add("overall")
    rows = {}
    for label, values in MMEB_V2_REFERENCES.items():
        shared = {k: v for k, v in values.items() if k in complete}
        if shared:
            rows[label] = shared
    return rows


def results_table(per_task: dict[str, dict[str, float]], metrics: dict[str, float]) -> str:
    """Markdown: one row per task run (modality, meta-task, metric, score), then the means."""
    lines = ["| task | modality | meta-task | metric | score |", "|---|---|---|---|---:|"]
    for task in MMEB_V2_TASKS:
        if task.name in per_task:
            score = per_task[task.name][task.metric]
            lines.append(
                f"| {task.name} | {task.modality} | {task.meta_task} | {task.metric} | {score:.2f} |"
            )
    lines += [
        f"| **{name}** | | | mean | {value:.2f} |" for name, value in metrics.items() if name in MODALITIES
    ]
    lines.append(f"| **overall** | | | mean | {metrics['overall']:.2f} |")
    return "\n".join(lines)


def run_tasks(
    model: EmbeddingModel, datas: Sequence[V2TaskData], enc: EncodeSettings, num_frames: int
) -> TaskResult:
    per_task = {data.task.name: score_task(model, data, enc, num_frames) for data in datas}
    main = {name: scores[MMEB_V2_BY_NAME[name].metric] for name, scores in per_task.items()}
    metrics = aggregate(main) | main
    published = published_beside(list(per_task))
    logger.info("MMEB-V2\n%s", results_table(per_task, metrics))
    if published:
        logger.info("published: %s", published)
    counts = {name: len(data.queries) for name, data in zip(per_task, datas, strict=True)}
    details = {
        "per_task": per_task,
        "candidates": {data.task.name: len(data.candidates) for data in datas},
        "published": published,
        "notes": {data.task.name: data.notes for data in datas if data.notes},
        "num_frames": num_frames,
    }
    return TaskResult(metrics, counts | {"tasks": len(per_task)}, details, {"rule": "trec_eval"})


# ------------------------------------------------------------------------------------------------------ commands


def task_table() -> str:
    """The 78 tasks, one a line: name, modality, meta-task, metric, candidates, annotation path, media root."""
    lines = ["| task | modality | meta-task | metric | candidates | data (under DIR) | frames / images |"]
    lines.append("|---|---|---|---|---|---|---|")
    for t in MMEB_V2_TASKS:
        lines.append(
            f"| {t.name} | {t.modality} | {t.meta_task} | {t.metric} | {t.scope} | {t.data} | {t.media} |"
        )
    return "\n".join(lines)


def v1_table() -> str:
    lines = ["| dataset | meta-task | split | metric |", "|---|---|---|---|"]
    lines += [f"| {d.name} | {d.meta_task} | {d.split} | precision@1 |" for d in MMEB_DATASETS]
    return "\n".join(lines)


def listing(argv: Sequence[str]) -> str | None:
    """The task table when ``argv`` is ``mmeb ... --list`` (V2 with ``--version 2``), else None; needs neither
    ``--model`` nor ``--data``."""
    argv = list(argv)
    if not argv or argv[0] != "mmeb" or "--list" not in argv:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--version", type=int, choices=(1, 2), default=1)
    known, _ = parser.parse_known_args(argv[1:])
    return task_table() if known.version == 2 else v1_table()


def select_tasks(data: Path, subsets: Sequence[str] | None) -> list[str]:
    """``--subsets`` (checked against the table), else every task whose annotation file exists under ``data``."""
    if subsets:
        unknown = [s for s in subsets if s not in MMEB_V2_BY_NAME]
        if unknown:
            hint = [s for s in unknown if s in MMEB_BY_NAME]
            raise LAYOUTS.error(
                f"unknown MMEB-V2 tasks {unknown}; `--list` prints the 78"
                + (f" ({hint} are MMEB-V2 names too: check the spelling)" if hint else "")
            )
        return list(subsets)
    if not data.is_dir():
        raise LAYOUTS.error(f"{data} is not a directory")
    present = [t.name for t in MMEB_V2_TASKS if task_present(data, t)]
    if not present:
        raise LAYOUTS.error(f"no MMEB-V2 task files under {data}")
    if len(present) < len(MMEB_V2_TASKS):
        logger.warning(
            "scoring %d of %d MMEB-V2 tasks (the others' files are absent)", len(present), len(MMEB_V2_TASKS)
        )
    return present


def prepare(args: argparse.Namespace):
    """Read and validate every chosen task (raises before any model is loaded); the CLI's runner."""
    num_frames = getattr(args, "num_frames", DEFAULT_NUM_FRAMES)
    if num_frames < 1:
        raise ValueError("--num-frames must be >= 1")
    data = Path(args.data)
    names = select_tasks(data, args.subsets)
    datas = [read_task(data, MMEB_V2_BY_NAME[name]) for name in names]
    info = {"name": args.name or "mmeb-v2", "path": str(data), "version": 2, "subsets": names}
    return (lambda model, enc: run_tasks(model, datas, enc, num_frames)), info, ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The MMEB-V2 options of ``python -m evaluate mmeb``."""
    parser.add_argument(
        "--version",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: MMEB's 36 image datasets (default); 2: MMEB-V2's 78 tasks in VLM2Vec-V2's local layout "
        "(--subsets then takes V2 task names; --image-root and --ties do not apply)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the task table of --version and exit (no --model/--data needed)",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=DEFAULT_NUM_FRAMES,
        help=f"MMEB-V2: frames sampled uniformly per video (default {DEFAULT_NUM_FRAMES}, as the reference)",
    )
    parser.epilog = "MMEB-V2 (--version 2) layout:\n" + LAYOUTS.text
