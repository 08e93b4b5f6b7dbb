"""Caption tables: read them, find their caption columns and give every row a stable key.

DreamLIP (CC3M, CC12M, YFCC15M) publishes one row per image: the image URL (or path), the alt-text
``raw_caption`` and short/long captions from three MLLM captioners (InstructBLIP ``IB``, ShareGPT4V ``SV``,
LLaVA ``LLA``). Every caption column is carried through download and filtering unchanged.

Keys: ``--key-column`` when the table has one (values must be unique and non-empty); otherwise the first 16 hex
digits of the SHA-1 of the URL (or path), so a row keeps its key when the table is re-ordered, split or
subsampled. Rows repeating an earlier row's URL are dropped as ``duplicate``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

DREAMLIP_CAPTION_COLUMNS = (
    "raw_caption",
    "shortIB_captions",
    "shortSV_captions",
    "shortLLA_captions",
    "longIB_captions",
    "longSV_captions",
    "longLLA_captions",
)
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")
DUPLICATE = "duplicate"
URL_KEY_DIGITS = 16


class PrepareError(ValueError):
    """The preparation cannot run as asked; the message says what is wrong and what to do."""


def read_table(path: Path) -> pd.DataFrame:
    """A caption table (.parquet .csv .tsv .jsonl); CSV/TSV cells are read as strings (keys keep their zeros)."""
    if not path.is_file():
        raise PrepareError(f"caption table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PrepareError(
            f"caption table {path}: unknown type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}"
        )
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        elif suffix == ".jsonl":
            table = pd.read_json(path, lines=True, dtype=False)
        else:
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as err:  # pandas / pyarrow raise many types for a broken file
        raise PrepareError(
            f"cannot read caption table {path}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from err
    if len(table) == 0:
        raise PrepareError(f"caption table {path} has no rows")
    table.columns = [str(c) for c in table.columns]
    return table.reset_index(drop=True)


def require_columns(table: pd.DataFrame, columns: dict[str, str | None], source: Path) -> None:
    """``columns`` maps a CLI flag to the column it names; raise listing every missing one and the real columns."""
    missing = [
        f"{flag} {name}" for flag, name in columns.items() if name is not None and name not in table.columns
    ]
    if missing:
        raise PrepareError(
            f"{source} lacks column(s) named by {', '.join(missing)}; its columns are {list(table.columns)}"
        )


def resolve_caption_columns(table: pd.DataFrame, requested: Sequence[str] | None, source: Path) -> list[str]:
    """The requested caption columns (all must exist), else every DreamLIP caption column the table has."""
    if requested:
        missing = [c for c in requested if c not in table.columns]
        if missing:
            raise PrepareError(
                f"{source} lacks caption column(s) {missing}; its columns are {list(table.columns)}. "
                "Fix --caption-columns."
            )
        if len(set(requested)) != len(requested):
            raise PrepareError(f"--caption-columns lists a column twice: {list(requested)}")
        return list(requested)
    found = [c for c in DREAMLIP_CAPTION_COLUMNS if c in table.columns]
    if not found:
        raise PrepareError(
            f"{source} has none of the DreamLIP caption columns {list(DREAMLIP_CAPTION_COLUMNS)}; "
            f"its columns are {list(table.columns)}. Name the caption columns with --caption-columns."
        )
    return found


def url_key(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:URL_KEY_DIGITS]


def key_column_values(table: pd.DataFrame, column: str, source: Path) -> list[str]:
    """The user's keys as strings; every key must be non-empty and unique."""
    keys = ["" if pd.isna(v) else str(v).strip() for v in table[column].tolist()]
    empty = [i for i, k in enumerate(keys) if not k]
    if empty:
        raise PrepareError(
            f"{source}: --key-column {column} is empty in row(s) {empty[:5]}; every row needs a key"
        )
    counts = pd.Series(keys).value_counts()
    dupes = counts[counts > 1].index.tolist()
    if dupes:
        raise PrepareError(f"{source}: --key-column {column} must be unique; repeated: {dupes[:5]}")
    return keys


def derived_keys(values: Sequence[str]) -> tuple[list[str], list[bool]]:
    """Keys hashed from the URLs/paths, and which rows repeat an earlier URL (to drop as ``duplicate``)."""
    keys = [url_key(v) for v in values]
    seen: set[str] = set()
    repeated = []
    for key in keys:
        repeated.append(key in seen)
        seen.add(key)
    return keys, repeated


def check_webdataset_keys(keys: Sequence[str]) -> None:
    """WebDataset splits a member name at the first dot of its file name, so keys cannot hold a dot."""
    bad = [k for k in keys if "." in k or k.startswith("/")]
    if bad:
        raise PrepareError(
            f"keys {bad[:3]} contain '.' or start with '/', which WebDataset cannot store as sample keys; "
            "use --output-format files or another --key-column"
        )
