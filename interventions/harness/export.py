"""``interventions export``: an experiment's result rows as one flat table (CSV or Parquet).

One table row per result row. Nested fields become dotted columns (``compute.tokens.B``,
``params.k``); lists (the interventions, raw log-likelihoods) are JSON text. A column whose values
mix types (a layer given as 8 in one row and "50%" in another) is text throughout, so every
column has one type.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from ..errors import InterventionError
from ..registry import Registry

EXPORTERS: Registry[Callable[[list[str], list[dict], Path], None]] = Registry("export format")


def flatten(row: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """(columns in first-seen order, flat rows with one type per column)."""
    flat = [flatten(row) for row in rows]
    columns = list(dict.fromkeys(name for row in flat for name in row))
    for name in columns:
        kinds = {_kind(row.get(name)) for row in flat} - {None}
        if len(kinds) > 1 and kinds != {"int", "float"}:
            for row in flat:
                if row.get(name) is not None and not isinstance(row[name], str):
                    row[name] = json.dumps(row[name])
    return columns, flat


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float"}.get(type(value), "text")


@EXPORTERS.register("csv")
def write_csv(columns: list[str], rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


@EXPORTERS.register("parquet")
def write_parquet(columns: list[str], rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {name: [row.get(name) for row in rows] for name in columns}
    for name, values in arrays.items():   # ints and floats in one column: floats
        if {_kind(v) for v in values} - {None} == {"int", "float"}:
            arrays[name] = [None if v is None else float(v) for v in values]
    pq.write_table(pa.table(arrays), path)


def export_rows(rows: list[dict], path: Path, fmt: str) -> Path:
    if not rows:
        raise InterventionError(f"no result rows to export to {path}")
    writer = EXPORTERS.get(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns, flat = table(rows)
    writer(columns, flat, path)
    return path


def export_cli(args) -> None:
    from .runner import RESULTS_FILE, results_folder
    from .store import read_results

    results_dir = Path(args.results) if args.results else results_folder(args.experiment)
    fmt = args.format or {".parquet": "parquet", ".csv": "csv"}.get(Path(args.out or "").suffix, "csv")
    found = read_results(results_dir / RESULTS_FILE)
    if not found.rows:
        raise InterventionError(f"no results in {results_dir / RESULTS_FILE}; run `interventions run "
                                f"{args.experiment}` first, or point --results at the folder that holds them")
    out = Path(args.out) if args.out else results_dir / f"results.{fmt}"
    export_rows(found.rows, out, fmt)
    note = f" ({found.problems()})" if found.problems() else ""
    print(f"{len(found.rows)} rows -> {out}{note}")
