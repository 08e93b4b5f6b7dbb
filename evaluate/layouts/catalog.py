"""The layouts each task accepts, one line each with the files it needs: shown by ``--help`` and below every
layout error, so a refused download says what would have been read."""

from __future__ import annotations

from evaluate.layouts.base import Layout, Layouts

ZEROSHOT = Layouts(
    "zeroshot",
    (
        Layout(
            "ImageFolder",
            "DATA[/val]/{wnid}/*.JPEG, one folder per class [+ wnids.txt beside it, class-index order]",
        ),
        Layout(
            "ImageNet val + devkit",
            "DATA[/val]/ILSVRC2012_val_NNNNNNNN.JPEG (flat) + ILSVRC2012_validation_ground_truth.txt + meta.mat "
            "(in DATA, DATA/data or DATA/ILSVRC2012_devkit_t12/data), or DATA/ILSVRC2012_devkit_t12.tar.gz",
        ),
        Layout(
            "ImageNet val + meta.bin",
            "DATA[/val]/ILSVRC2012_val_NNNNNNNN.JPEG (flat) + DATA/meta.bin (written by torchvision's ImageNet)",
        ),
        Layout(
            "ImageNet val, Kaggle",
            "DATA/LOC_val_solution.csv (ImageId, PredictionString starting with the wnid) + "
            "DATA/ILSVRC/Data/CLS-LOC/val/*.JPEG (or flat in DATA[/val]) [+ LOC_synset_mapping.txt]",
        ),
    ),
    (
        "class index = line of --classes / wnids.txt, else position in the sorted wnids (ImageNet's standard "
        "1000-class order); classes without images still take part in classification",
    ),
)

KNN = Layouts(
    "knn",
    (
        Layout(
            "train/val ImageFolders",
            "DATA/train/{class}/*.jpg (memory bank) + DATA/val/{class}/*.jpg (queries) [+ DATA/wnids.txt]",
        ),
    ),
)

RETRIEVAL = Layouts(
    "retrieval",
    (
        Layout(
            "COCO captions dir",
            "DATA/annotations/captions_{split}.json + DATA/{split}/*.jpg (--split, default val2017)",
        ),
        Layout(
            "COCO captions JSON",
            "--data captions_X.json [--image-root DIR]; JSON images [{id, file_name}], annotations "
            "[{image_id, caption}]",
        ),
        Layout(
            "Karpathy JSON",
            "--data dataset_coco.json | dataset_flickr30k.json (or a DIR with one) [--split test] "
            "[--image-root DIR, default beside the JSON]; image DIR/{filepath}/{filename} (COCO 2014 "
            "train2014/, val2014/; COCO 2017 train2017/, val2017/ found by cocoid) or DIR/{filename} (Flickr30k)",
        ),
        Layout(
            "Flickr30k CSV (nlphuji/flickr30k)",
            "--data flickr_annotations_30k.csv (or its DIR) [--split test] + flickr30k-images/ or "
            "flickr30k-images.zip beside it (or --image-root DIR|ZIP); columns raw (JSON list of captions), "
            "sentids, split, filename, img_id",
        ),
    ),
)

WINOGROUND = Layouts(
    "winoground",
    (
        Layout(
            "facebook/winoground files",
            "DATA[/data]/examples.jsonl + DATA[/data]/images.zip (read in place) or DATA[/data]/images/*.png; "
            "rows {id, image_0, image_1, caption_0, caption_1, ...}",
        ),
        Layout(
            "facebook/winoground parquet",
            "DATA/data/test-*.parquet, DATA/default/test/*.parquet, DATA/*.parquet or --data FILE.parquet; "
            "columns id, image_0, image_1 ({bytes, path}), caption_0, caption_1 [, tag, collapsed_tag, ...]",
        ),
        Layout(
            "datasets save_to_disk",
            "DATA/dataset_dict.json (a DatasetDict with a 'test' split) or DATA/dataset_info.json (a Dataset); "
            "columns as the parquet",
        ),
    ),
)

MMVP = Layouts(
    "mmvp",
    (
        Layout(
            "MMVP/MMVP_VLM repo",
            "DATA/Questions.csv ('Question ID,Type,Statement'; rows 2k-1 and 2k form a pair) + "
            "DATA/MLLM_VLM Images/{Type}/{Question ID}.jpg",
        ),
    ),
)

MMEB = Layouts(
    "mmeb",
    (
        Layout(
            "TIGER-Lab/MMEB-eval",
            "DATA/{subset}/test-*.parquet (qry_text, qry_img_path, tgt_text, tgt_img_path; positive first) + "
            "DATA/eval_images/ (the unzipped images.zip, or --image-root); an empty path = a text-only input",
        ),
        Layout(
            "parquet conversion",
            "DATA/{subset}/test/0000.parquet (the hub's refs/convert/parquet, what `datasets` downloads); "
            "columns as above",
        ),
        Layout(
            "newer image-task annotations",
            "either file layout with qry_inst, qry_text, tgt_text [, qry_img_path, tgt_inst, tgt_img_path] "
            "(VLM2Vec-V2's image-query files; no tgt_img_path = text candidates) + --image-root DIR",
        ),
    ),
    (
        "texts are kept verbatim (trailing newline, <|image_1|>); a candidate without text and image is "
        "scored as the empty text",
    ),
)
