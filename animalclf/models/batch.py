"""Batch prediction with Ray Data: every image of a folder or an ``s3://`` prefix through the same
:class:`~animalclf.models.predict.Predictor` that Serve runs, one output row per image.

The driver lists the images, drops those the output already holds (a rerun resumes), pins the
model (an alias becomes one version before any actor starts, so all of them agree), then streams
``ray.data.from_items(paths).map_batches(PredictActor, concurrency=N)``: each actor loads the model
once, reads and decodes its batch (a file that cannot be read or decoded becomes a row with an
``error``, never a failed job) and predicts. The driver writes the rows as they come: Parquet part
files (each written under a temporary name and renamed, so a killed run never leaves a half file
that a resume would trust) or one CSV file appended in whole lines.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa

from animalclf.config import IMAGE_EXTENSIONS
from animalclf.data import s3
from animalclf.data.decode import MAX_BYTES
from animalclf.errors import UserError
from animalclf.models.predictions import SCHEMA, open_sink
from animalclf.runtime.progress import ProgressLog

log = logging.getLogger(__name__)

__all__ = ["BatchOptions", "BatchResult", "PredictActor", "list_images", "predict_batch"]

FORMATS = ("parquet", "csv")


@dataclass(frozen=True)
class BatchOptions:
    """What one batch prediction run does (``ray_jobs/predict.py``'s flags)."""

    model: str
    data: str
    out: str
    format: Optional[str] = None  # "parquet" | "csv"; default: csv when ``out`` ends in .csv
    top_k: int = 5
    batch_size: int = 32
    concurrency: int = 1  # predictor actors
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor; > 0 runs the model on CUDA
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    rows_per_file: int = 1000  # rows per Parquet part (and per CSV append): what a kill can lose
    limit: Optional[int] = None  # only the first N images still to do (smoke tests)

    @property
    def fmt(self) -> str:
        return self.format or ("csv" if self.out.lower().endswith(".csv") else "parquet")

    def validate(self) -> "BatchOptions":
        if self.fmt not in FORMATS:
            raise UserError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}.")
        for name in ("top_k", "batch_size", "concurrency", "rows_per_file"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise UserError("--num-cpus and --gpus must not be negative.")
        if self.fmt == "csv" and s3.is_remote(self.out):
            raise UserError(f"CSV output is one local file that grows as rows arrive: pass a local --out, or write "
                            f"Parquet to {self.out}.")
        return self


@dataclass(frozen=True)
class BatchResult:
    """What a run did: ``listed`` images, ``skipped`` as already in the output, ``written`` now (of
    which ``errors`` are error rows), by ``model_version``."""

    out: str
    listed: int
    skipped: int
    written: int
    errors: int
    model_version: str
    seconds: float


# ----------------------------------------------------------------------------- listing the images

def list_images(data: str) -> list[str]:
    """Every file with an image extension under ``data`` (class folders or flat, any depth; hidden
    files and folders left out), sorted: absolute paths for a folder, ``s3://`` URIs for a bucket."""
    if s3.is_remote(data):
        from pyarrow import fs

        base = s3.strip(data)
        try:
            infos = s3.s3_filesystem().get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise UserError(f"Cannot list {data} ({e}); check the bucket name and the AWS_* variables.") from None
        names = [i.path for i in infos if i.type == fs.FileType.File]
        found = [f"{s3.SCHEME}{n}" for n in names if _wanted(n[len(base):])]
    else:
        root = Path(data)
        if not root.is_dir():
            raise UserError(f"--data {data!r} is not a folder: pass a folder of images (class folders or flat) "
                            "or an s3:// prefix.")
        root = root.resolve()  # absolute: actors run in other directories
        names = [str(p) for p in root.rglob("*") if p.is_file()]
        found = [n for n in names if _wanted(n[len(str(root)):])]
    others = len(names) - len(found)
    if others:
        log.info("Left out %d file(s) under %s without an image extension (%s) or hidden.", others, data,
                 " ".join(IMAGE_EXTENSIONS))
    if not found:
        raise UserError(f"No images under {data} (extensions {' '.join(IMAGE_EXTENSIONS)}).")
    return sorted(found)


def _wanted(relative: str) -> bool:
    parts = [p for p in relative.split("/") if p]
    return bool(parts) and not any(p.startswith(".") for p in parts) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------- the actor

class PredictActor:
    """One Ray Data actor: loads the model once, then turns batches of ``path`` into output rows."""

    def __init__(self, model: str, top_k: int, device: str = "cpu", filesystem: Any = None,
                 tracking_uri: Optional[str] = None, read_threads: int = 8):
        from animalclf.models.predict import Predictor

        if tracking_uri:  # the driver's store (credentials from this worker's environment, as Serve's replicas)
            from animalclf.tracking import configure

            configure(uri=tracking_uri)
        self.predictor = Predictor.load(model, device)
        self.top_k = top_k
        self.filesystem = filesystem  # pyarrow S3FileSystem for s3:// paths: it carries the driver's endpoint and keys
        self.pool = ThreadPoolExecutor(read_threads)  # reads overlap (a bucket's latency); decoding stays on one core

    def read(self, path: str) -> bytes:
        """The file's bytes; larger than the decoder accepts is refused before reading it all."""
        if s3.is_remote(path):
            fs = self.filesystem or s3.s3_filesystem()
            size = fs.get_file_info(s3.strip(path)).size
            if size is not None and size > MAX_BYTES:
                raise OSError(f"{size} bytes, more than the {MAX_BYTES} accepted")
            with fs.open_input_stream(s3.strip(path)) as f:
                return f.read()
        size = os.stat(path).st_size
        if size > MAX_BYTES:
            raise OSError(f"{size} bytes, more than the {MAX_BYTES} accepted")
        with open(path, "rb") as f:
            return f.read()

    def _read(self, path: str) -> bytes | Exception:
        try:
            return self.read(path)
        except Exception as e:  # noqa: BLE001 - any file-level failure is that file's error row
            return e

    def _tensor(self, data: bytes | Exception) -> Any:
        """A CHW tensor, or the exception that kept this file from becoming one."""
        if isinstance(data, Exception):
            return data
        try:
            return self.predictor.tensor(self.predictor.decode(data))
        except Exception as e:  # noqa: BLE001 - any file-level failure is that file's error row
            return e

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        import torch

        paths = [str(p) for p in batch["path"]]
        loaded = [self._tensor(d) for d in self.pool.map(self._read, paths)]
        good = [i for i, t in enumerate(loaded) if isinstance(t, torch.Tensor)]
        probs = self.predictor.predict_tensors(torch.stack([loaded[i] for i in good])) if good else []
        answers = dict(zip(good, probs))
        rows = []
        for i, path in enumerate(paths):
            if i in answers:
                top = self.predictor.top_k(answers[i], self.top_k)
                rows.append({"path": path, "class": top[0]["class"], "probability": top[0]["probability"],
                             "top_k": top, "model_version": self.predictor.version, "error": None})
            else:
                rows.append({"path": path, "class": None, "probability": None, "top_k": [],
                             "model_version": self.predictor.version, "error": _one_line(loaded[i])})
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


# ----------------------------------------------------------------------------- the run

def predict_batch(opts: BatchOptions, connect: Optional[Callable[[], Any]] = None,
                  on_write: Optional[Callable[[int], None]] = None) -> BatchResult:
    """Predict every image of ``opts.data`` not yet in ``opts.out``; ``connect`` (e.g.
    :func:`animalclf.runtime.localray.init_ray`) is called once the inputs are checked and there is
    work to do (without it, the current Ray, or one Ray Data starts); ``on_write(rows)`` after each
    write (progress, benchmarks). A model version other than the output's is refused."""
    import ray

    from animalclf.evaluate.registry import is_model_ref
    from animalclf.models.predict import Predictor, pin_version

    t0 = time.monotonic()
    opts.validate()
    tracking_uri = None
    if is_model_ref(opts.model):
        from animalclf.tracking import configure, shareable_uri

        configure()
        tracking_uri = shareable_uri()
    sink = open_sink(opts.out, opts.fmt)
    done = sink.done()
    paths = list_images(opts.data)
    model = pin_version(opts.model) if opts.model.startswith("models:/") else opts.model
    if model != opts.model:
        log.info("%s is %s for this whole run", opts.model, model)
    if model.startswith("models:/"):
        _registered(model)
    elif not is_model_ref(model):
        model = str(Path(model).resolve())  # absolute: actors run in other directories
    version = Predictor.load(model).version  # a bad model fails here in one line, not in N actors
    others = sorted({v for v in done.values() if v != version})
    if others:
        raise UserError(f"{opts.out} holds predictions of {', '.join(others)}, not {version}: pass a new --out to "
                        "predict with this model (a resume must use the same version).")
    todo = [p for p in paths if p not in done]
    skipped = len(paths) - len(todo)
    if opts.limit is not None:
        todo = todo[:opts.limit]
    log.info("%d image(s) under %s: %d already in %s, %d to predict with %s on %d actor(s)", len(paths), opts.data,
             skipped, opts.out, len(todo), version, opts.concurrency)
    written = errors = 0
    if todo:
        if connect is not None:
            connect()
        ds = ray.data.from_items([{"path": p} for p in todo],
                                 override_num_blocks=max(1, min(-(-len(todo) // opts.batch_size), 10_000)))
        remote = {"num_cpus": opts.num_cpus, **({"num_gpus": opts.num_gpus} if opts.num_gpus else {}),
                  **({"resources": dict(opts.resources)} if opts.resources else {})}
        ds = ds.map_batches(PredictActor, batch_size=opts.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=opts.concurrency),
                            fn_constructor_kwargs={"model": model, "top_k": opts.top_k,
                                                   "device": "cuda" if opts.num_gpus else "cpu", "tracking_uri": tracking_uri,
                                                   "filesystem": s3.s3_filesystem() if s3.is_remote(opts.data) else None},
                            **remote)
        progress = ProgressLog("Batch prediction", len(todo))  # count, rate and ETA every 10 s, like training
        for table in _tables(ds.iter_batches(batch_size=opts.rows_per_file, batch_format="pyarrow")):
            sink.write(table)
            written += table.num_rows
            errors += table.num_rows - table.column("error").null_count
            progress.update(table.num_rows)
            if on_write is not None:
                on_write(table.num_rows)
        progress.done()
    result = BatchResult(opts.out, len(paths), skipped, written, errors, version, time.monotonic() - t0)
    log.info("Done in %.1f s: %d row(s) written to %s, %d error row(s), %d skipped as already there", result.seconds,
             written, opts.out, errors, skipped)
    return result


def _registered(ref: str) -> None:
    """Check that the version ``models:/NAME/N`` exists (one line naming the fix if not)."""
    from mlflow import MlflowClient

    name, number = ref[len("models:/"):].rsplit("/", 1)
    try:
        MlflowClient().get_model_version(name, number)
    except Exception as e:  # noqa: BLE001 - any registry failure is the user's to fix
        raise UserError(f"{ref} is not in the MLflow registry ({type(e).__name__}); check the name, the version "
                        "and MLFLOW_TRACKING_URI.") from None


def _tables(batches: Iterable[pa.Table]) -> Iterable[pa.Table]:
    """Ray Data's batches in the output schema (its concatenation may widen or reorder columns)."""
    for b in batches:
        yield b.select(SCHEMA.names).cast(SCHEMA)
