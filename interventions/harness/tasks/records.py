"""User data as records: one dict per line or row, with its 1-based number for error messages.

JSON, CSV/TSV and Parquet files, and Hugging Face datasets, are read through
``datasets.load_dataset`` (CSV cells as text, so "007" and "NA" stay what they say). JSON Lines
files are read line by line instead: errors then name the line an editor shows, blank lines are
allowed, and every value keeps the type it was written with (datasets' JSON reader renumbers
rows around blank lines and fails on a column whose type changes between rows).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...models.cache import cache_root
from ...registry import Registry
from .errors import DatasetFormatError, DatasetReadError, TaskOptionError


@dataclass(frozen=True)
class Record:
    number: int    # 1-based line (JSON Lines) or row (tables, header excluded)
    values: dict


@dataclass(frozen=True)
class Records:
    """What a reader returns: the records, how they are counted, and where they came from."""

    rows: list[Record]
    unit: str                          # "line" or "row", for error messages
    columns: tuple[str, ...] | None    # a table's columns; None when each line has its own keys
    source: str                        # recorded in every result row (``task_source``)
    label: str                         # how error messages name the data (a path, or a dataset id)


READERS: Registry[Callable[[Path], Records]] = Registry(
    "data file format", TaskOptionError, "Convert the file to one of these, or set format: to the one it is in.")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet", ".pq": "parquet"}


def file_format(path: Path, declared: str | None) -> str:
    """The declared format, or the one the extension names."""
    if declared is not None:
        READERS.get(declared)   # unknown: names the known formats
        return declared
    if path.suffix.lower() not in EXTENSIONS:
        raise TaskOptionError(f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
                              f"set format: to one of {', '.join(READERS)} in the task's options")
    return EXTENSIONS[path.suffix.lower()]


def read_file(path: Path, declared_format: str | None = None) -> Records:
    if not path.is_file():
        raise TaskOptionError(f"data file not found: {path} (a relative path is read from the directory you "
                              "run in)")
    return READERS.get(file_format(path, declared_format))(path)


def file_source(path: Path, fmt: str) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{fmt} file {path} (sha256 {digest[:12]})"


@READERS.register("jsonl")
def read_json_lines(path: Path) -> Records:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(path, number, "<line>", f"is not valid JSON ({e.msg})") from None
        if not isinstance(values, dict):
            raise DatasetFormatError(path, number, "<line>", "must be a JSON object")
        rows.append(Record(number, values))
    return Records(rows, "line", None, file_source(path, "jsonl"), str(path))


@READERS.register("json")
def read_json(path: Path) -> Records:
    return _table(path, "json", "json")


@READERS.register("parquet")
def read_parquet(path: Path) -> Records:
    return _table(path, "parquet", "parquet")


@READERS.register("csv")
def read_csv(path: Path) -> Records:
    return _text_table(path, ",", "csv")


@READERS.register("tsv")
def read_tsv(path: Path) -> Records:
    return _text_table(path, "\t", "tsv")


def _text_table(path: Path, sep: str, fmt: str) -> Records:
    """A CSV/TSV file with every cell read as text; only an empty cell is missing."""
    import datasets

    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle, delimiter=sep), None)
    if not header:
        raise TaskOptionError(f"{path} is empty: a {fmt} file needs a header row naming its columns")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise TaskOptionError(f"{path}: the header repeats the column name(s) {', '.join(map(repr, repeated))}; "
                              "give every column its own name")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return _table(path, "csv", fmt, sep=sep, features=features, keep_default_na=False, na_values=[""])


def _table(path: Path, builder: str, fmt: str, **config) -> Records:
    """Every row of one local file, through the datasets builder ``builder``."""
    # local files are cached next to the models, not in the user's hub cache
    table = _load(f"{path} as {fmt}", builder, data_files=str(path), split="train",
                  cache_dir=str(cache_root() / "datasets"), **config)
    rows = [Record(number, values) for number, values in enumerate(table, start=1)]
    return Records(rows, "row", tuple(table.column_names), file_source(path, fmt), str(path))


def read_hub(dataset: str, split: str, config: str | None = None, revision: str | None = None) -> Records:
    """One split of a Hugging Face dataset (a hub id, or a local folder of data files)."""
    local = Path(dataset).exists()
    named = f"{dataset}{f' ({config})' if config else ''}, split {split!r}"
    try:
        table = _load(f"Hugging Face dataset {named}", dataset, config, split=split, revision=revision,
                      **({"cache_dir": str(cache_root() / "datasets")} if local else {}))
    except DatasetReadError as error:
        if not local and hub_offline():
            raise TaskOptionError(
                f"Hugging Face dataset {dataset!r} is not a local folder and could not be read from the local cache "
                f"({error.reason}), and the hub is off (HF_HUB_OFFLINE=1, this package's default): run once with "
                "HF_HUB_OFFLINE=0 to download it, or save it as a file and use {name: file, options: {path: ...}}"
            ) from None
        raise
    rows = [Record(number, values) for number, values in enumerate(table, start=1)]
    source = f"Hugging Face dataset {named}, {len(rows)} rows, fingerprint {table._fingerprint}"
    return Records(rows, "row", tuple(table.column_names), source, f"{dataset} [{split}]")


def hub_offline() -> bool:
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _load(what: str, *args, **kwargs):
    """``datasets.load_dataset(*args, **kwargs)``, quietly; a failure is one line naming ``what``."""
    import datasets

    try:
        with _no_progress_bars(datasets):
            return datasets.load_dataset(*args, **kwargs)
    except Exception as error:   # datasets wraps the parser's or the hub's error in its own types
        raise DatasetReadError(what, _reason(error)) from None


def _reason(error: BaseException) -> str:
    """The innermost cause's first line: datasets' own message is often a generic wrapper."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def _no_progress_bars(datasets):
    """Reading a few hundred rows needs no progress bar; leave the caller's setting as it was."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
