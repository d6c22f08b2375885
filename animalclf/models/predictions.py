"""Where batch prediction rows go, and which images they already cover (a rerun resumes from it):
Parquet part files in a folder or under an ``s3://`` prefix, or one CSV file. Nothing half-written
is ever trusted: a local Parquet part is written under a hidden ``.tmp`` name and renamed, an
object store upload appears whole or not at all, and CSV rows are appended in whole chunks whose
possibly cut-off last line is removed before a resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from animalclf.data import s3
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SCHEMA", "CSV_COLUMNS", "Sink", "ParquetSink", "CsvSink", "open_sink"]

# One row per image; ``class``/``probability`` are the top-1, empty (with ``top_k`` []) on an error row.
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("class", pa.string()),
    ("probability", pa.float64()),
    ("top_k", pa.list_(pa.struct([("class", pa.string()), ("probability", pa.float64())]))),
    ("model_version", pa.string()),
    ("error", pa.string()),
])
CSV_COLUMNS = [f.name for f in SCHEMA]


class Sink(Protocol):
    """Where rows go; what is there already (resume)."""

    out: str

    def done(self) -> dict[str, str]:
        """``path -> model_version`` of every row already written."""

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows durably: all of them, or (after a kill) none."""


class ParquetSink:
    """A directory (or ``s3://`` prefix) of ``part-*.parquet`` files; a local part is written as a
    hidden ``.tmp`` file first and renamed, an object store's upload appears whole or not at all."""

    def __init__(self, out: str):
        from pyarrow import fs

        self.out = out
        self.remote = s3.is_remote(out)
        self.fs = s3.s3_filesystem() if self.remote else fs.LocalFileSystem()
        self.base = s3.strip(out) if self.remote else str(Path(out).resolve())
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.parts = 0

    def _files(self) -> list[Any]:
        from pyarrow import fs

        info = self.fs.get_file_info(self.base)
        if info.type == fs.FileType.File:
            raise UserError(f"--out {self.out} is a file: Parquet output is a folder of part files (or name a .csv).")
        if info.type == fs.FileType.NotFound:
            return []
        return self.fs.get_file_info(fs.FileSelector(self.base, recursive=False))

    def done(self) -> dict[str, str]:
        import pyarrow.parquet as pq

        seen: dict[str, str] = {}
        for f in self._files():
            name = f.path.rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(".tmp") and not self.remote:
                self.fs.delete_file(f.path)  # a part a killed run never finished: its images are done again
                continue
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            try:
                table = pq.read_table(f.path, columns=["path", "model_version"], filesystem=self.fs)
            except Exception as e:  # noqa: BLE001 - not ours, or damaged: its images are done again
                log.warning("Ignoring %s, which is not a readable Parquet file (%s: %s).", f.path, type(e).__name__, e)
                continue
            seen.update(zip(table.column("path").to_pylist(), table.column("model_version").to_pylist()))
        return seen

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        name = f"part-{self.run}-{self.parts:05d}.parquet"
        self.parts += 1
        if self.remote:
            pq.write_table(table, f"{self.base}/{name}", filesystem=self.fs)
            return
        os.makedirs(self.base, exist_ok=True)
        tmp = os.path.join(self.base, f".{name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(self.base, name))


class CsvSink:
    """One CSV file; ``top_k`` is a JSON string. Rows are appended in whole chunks (one write, then
    fsync); a kill mid-write can only leave a partial last line, which the next run cuts off."""

    def __init__(self, out: str):
        self.out = out
        self.path = Path(out).resolve()

    def done(self) -> dict[str, str]:
        if self.path.is_dir():
            raise UserError(f"--out {self.out} is a folder: CSV output is one file (or drop --format csv for Parquet parts).")
        if not self.path.exists():
            return {}
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a line cut off by a kill
                log.warning("Cutting an incomplete last line off %s (a run was stopped mid-write).", self.out)
                f.truncate(end)
                data = data[:end]
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        if data and (reader.fieldnames or []) != CSV_COLUMNS:
            raise UserError(f"{self.out} is not a predictions CSV (columns {', '.join(CSV_COLUMNS)}): pass a new --out.")
        return {row["path"]: row["model_version"] for row in reader}

    def write(self, table: pa.Table) -> None:
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            writer.writerow(CSV_COLUMNS)
        for row in table.to_pylist():
            row["top_k"] = json.dumps(row["top_k"])
            writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


def open_sink(out: str, fmt: str) -> Sink:
    """The output for ``--out`` in ``fmt`` (``"parquet"`` or ``"csv"``)."""
    return CsvSink(out) if fmt == "csv" else ParquetSink(out)
