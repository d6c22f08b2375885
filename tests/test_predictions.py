"""Where batch prediction rows go (animalclf.models.predictions): Parquet parts locally and on the
local S3 server (moto), one CSV file; what a resume reads back, and what it refuses to trust."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from animalclf.errors import UserError
from animalclf.models.predictions import CSV_COLUMNS, SCHEMA, CsvSink, ParquetSink, open_sink


def rows(*paths: str, version: str = "m/1") -> pa.Table:
    return pa.Table.from_pylist([
        {"path": p, "class": None if p.endswith("bad.jpg") else "Cat", "probability": None if p.endswith("bad.jpg") else 0.9,
         "top_k": [] if p.endswith("bad.jpg") else [{"class": "Cat", "probability": 0.9}, {"class": "Dog", "probability": 0.1}],
         "model_version": version, "error": "InvalidImage: not an image" if p.endswith("bad.jpg") else None}
        for p in paths], schema=SCHEMA)


def test_parquet_parts_are_renamed_whole_and_leftovers_are_not_trusted(tmp_path, caplog):
    out = tmp_path / "preds"
    sink = open_sink(str(out), "parquet")
    assert isinstance(sink, ParquetSink) and sink.done() == {}
    sink.write(rows("/a.jpg", "/bad.jpg"))
    sink.write(rows("/c.jpg"))
    parts = sorted(p.name for p in out.iterdir())
    assert len(parts) == 2 and all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    assert pq.read_table(out).num_rows == 3 and pq.read_table(out).schema.equals(SCHEMA)
    (out / ".part-x-00009.parquet.tmp").write_bytes(b"PAR1 cut short")  # a kill mid-write
    (out / "part-y-00000.parquet").write_bytes(b"not parquet")  # not ours: warned about, not trusted
    with caplog.at_level(logging.WARNING, logger="animalclf.models.predictions"):
        assert ParquetSink(str(out)).done() == {"/a.jpg": "m/1", "/bad.jpg": "m/1", "/c.jpg": "m/1"}
    assert not (out / ".part-x-00009.parquet.tmp").exists() and "part-y-00000.parquet" in caplog.text
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ParquetSink(str(tmp_path / "file")).done()


def test_csv_appends_whole_rows_and_cuts_off_a_partial_last_line(tmp_path):
    out = tmp_path / "sub" / "preds.csv"
    sink = open_sink(str(out), "csv")
    assert isinstance(sink, CsvSink) and sink.done() == {}
    sink.write(rows("/a.jpg", "/bad.jpg"))
    sink.write(rows("/c,d.jpg"))  # a comma in a path is quoted
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 4
    assert lines[1].startswith('/a.jpg,Cat,0.9,"[{""class"": ""Cat""') and lines[2].endswith(",m/1,InvalidImage: not an image")
    with open(out, "a") as f:
        f.write("/e.jpg,Cat,0.")  # a kill mid-write
    assert CsvSink(str(out)).done() == {"/a.jpg": "m/1", "/bad.jpg": "m/1", "/c,d.jpg": "m/1"}
    assert out.read_text().endswith("\n") and len(out.read_text().splitlines()) == 4
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a predictions CSV"):
        CsvSink(str(other)).done()
    with pytest.raises(UserError, match="is a folder"):
        CsvSink(str(tmp_path)).done()


def test_parquet_parts_under_an_s3_prefix(s3):
    from conftest import BUCKET

    sink = ParquetSink(f"s3://{BUCKET}/preds/run1")
    assert sink.done() == {}
    sink.write(rows("s3://x/a.jpg", version="m/2"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="preds/")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("preds/run1/part-")
    assert ParquetSink(f"s3://{BUCKET}/preds/run1/").done() == {"s3://x/a.jpg": "m/2"}
