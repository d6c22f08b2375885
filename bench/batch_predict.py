"""Batch prediction throughput per core: the Ray Data job (animalclf.models.batch, what
``ray_jobs/predict.py`` runs) against an in-process ``Predictor`` loop over the same images, side
by side in one run (Lite0 at 224 px, ImageNet backbone, the shared photos).

    python bench/batch_predict.py [--data DIR] [--repeat 4] [--actors 1] [--batch-size 32] [--smoke-test]

Both sides read, decode, preprocess and predict every file with one torch thread per core: the
loop in this process (``torch.set_num_threads(1)``), the job with ``--actors`` actors of one CPU
each (Ray sets their thread count from ``num_cpus``). The loop runs before and after the job and
the two are averaged (the machine's speed drifts). The job is timed end to end (private Ray head
already up; actor start and model load included) and in steady state (from its first written
part to its last). Target: job per core >= 0.8x the loop.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from animalclf.models.batch import BatchOptions, list_images, predict_batch
from animalclf.models.predict import Predictor
from common import DEFAULT_DATA, load_average, make_model, ray_head


def image_farm(data: str, repeat: int, directory: Path) -> list[str]:
    """``repeat`` links to every image under ``data`` (distinct paths, the same bytes)."""
    images = list_images(data)
    for r in range(repeat):
        d = directory / f"copy{r}"
        d.mkdir(parents=True)
        for i, p in enumerate(images):
            (d / f"{i:05d}{Path(p).suffix.lower()}").symlink_to(p)
    return list_images(str(directory))


def loop_rate(model: str, paths: list[str], batch_size: int) -> float:
    """Images/s of the in-process Predictor on one thread: read, decode, tensor, predict per batch."""
    predictor = Predictor.load(model)
    predictor.predict_tensors(torch.stack([predictor.tensor(predictor.decode(Path(paths[0]).read_bytes()))]))  # warm
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        xs = []
        for p in paths[i:i + batch_size]:
            try:
                xs.append(predictor.tensor(predictor.decode(Path(p).read_bytes())))
            except Exception:  # noqa: BLE001 - as the job: a bad file is skipped, not fatal
                pass
        if xs:
            for probs in predictor.predict_tensors(torch.stack(xs)):
                predictor.top_k(probs, 5)
    return len(paths) / (time.perf_counter() - t0)


def job_rates(model: str, data: str, out: str, actors: int, batch_size: int, rows_per_file: int) -> tuple[float, float]:
    """(end-to-end, steady-state) images/s of one predict_batch run into a fresh ``out``."""
    stamps: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    res = predict_batch(BatchOptions(model=model, data=data, out=out, batch_size=batch_size, concurrency=actors,
                                     num_cpus=1, rows_per_file=rows_per_file),
                        on_write=lambda n: stamps.append((time.perf_counter(), n)))
    wall = time.perf_counter() - t0
    steady = sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 2 else float("nan")
    return res.written / wall, steady


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"images (default: {DEFAULT_DATA})")
    p.add_argument("--repeat", type=int, default=4, help="each image this many times (default: 4)")
    p.add_argument("--actors", type=int, default=1, help="predictor actors, one CPU each (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--image-size", type=int, default=224, help="(default: 224)")
    p.add_argument("--smoke-test", action="store_true", help="64 px, one copy: seconds")
    args = p.parse_args()
    if args.smoke_test:
        args.repeat, args.image_size = 1, 64
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(str(tmp / "ck"), image_size=args.image_size)
        paths = image_farm(args.data, args.repeat, tmp / "images")
        print(f"{len(paths)} images, Lite0 {args.image_size} px, batch {args.batch_size}, {args.actors} actor(s); "
              f"{load_average()}", flush=True)
        with ray_head(num_cpus=max(2, args.actors)):
            before = loop_rate(model, paths, args.batch_size)
            print(f"loop (before): {before:.1f} img/s on 1 thread; {load_average()}", flush=True)
            end_to_end, steady = job_rates(model, str(tmp / "images"), str(tmp / "out"), args.actors, args.batch_size,
                                           rows_per_file=2 * args.batch_size)
            print(f"job: {end_to_end:.1f} img/s end to end, {steady:.1f} img/s steady, on {args.actors} actor(s); "
                  f"{load_average()}", flush=True)
            after = loop_rate(model, paths, args.batch_size)
            print(f"loop (after): {after:.1f} img/s on 1 thread; {load_average()}", flush=True)
    loop = (before + after) / 2
    per_core = {"end to end": end_to_end / args.actors, "steady": steady / args.actors}
    print(f"per core: loop {loop:.1f} img/s; job {per_core['end to end']:.1f} end to end "
          f"({per_core['end to end'] / loop:.2f}x), {per_core['steady']:.1f} steady ({per_core['steady'] / loop:.2f}x); "
          f"target >= 0.8x; {load_average()}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
