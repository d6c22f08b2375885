"""What the allocator setting does to one forward pass: the in-process Predictor (decode, preprocess,
Lite0 forward at 224 px, top-5, one torch thread) in fresh processes, taking turns with and without
``animalclf.runtime.allocator.keep_freed_memory`` (what a Serve replica applies: ``mmap_threshold_mib``).

    python bench/allocator.py [--image JPEG] [--rounds 4] [--n 60] [--warmup 20] [--smoke-test]

Each process is new, so glibc's thresholds start where a new replica's do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import load_average, make_model

BENCH = Path(__file__).resolve().parent
CHILD = """
import json, statistics, torch
from common import photo_bytes, timed
from animalclf.runtime.allocator import keep_freed_memory
from animalclf.models.predict import Predictor
torch.set_num_threads(1)
if {tuned!r}:
    keep_freed_memory({mib})  # what a replica does (ServeSettings.mmap_threshold_mib)
p, data = Predictor.load({model!r}), photo_bytes({image!r})
print(json.dumps(statistics.median(timed(lambda: p.predict([p.decode(data)], 5), {n}, {warmup}))))
"""


def one(model: str, image: str | None, tuned: bool, n: int, warmup: int) -> float:
    """The p50 ms of ``n`` in-process predictions in a fresh Python, with or without the setting."""
    from serve.settings import ServeSettings

    image = str(Path(image).resolve()) if image else None
    code = CHILD.format(tuned=tuned, model=model, image=image, n=n, warmup=warmup, mib=ServeSettings().mmap_threshold_mib)
    # run in bench/: `python -c` puts its working directory first on sys.path, so the child finds common.py
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Forward-pass latency with and without the allocator setting", add_help=add_help)
    p.add_argument("--image", default=None, help="JPEG (default: the first shared Cat photo)")
    p.add_argument("--rounds", type=int, default=4, help="pairs of fresh processes (default: 4)")
    p.add_argument("--n", type=int, default=60, help="timed calls per process (default: 60)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (default: 20)")
    p.add_argument("--smoke-test", action="store_true", help="1 round, n=5, warmup=2")
    return p


def main(args: argparse.Namespace) -> None:
    if args.smoke_test:
        args.rounds, args.n, args.warmup = 1, 5, 2
    got: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(os.path.join(tmp, "lite0"))
        for _ in range(args.rounds):
            for tuned in (False, True):
                got[tuned].append(one(model, args.image, tuned, args.n, args.warmup))
    print(f"\nLite0 224 px, one torch thread, in-process decode+predict p50 per fresh process ({args.n} calls each)")
    for tuned, xs in got.items():
        print(f"{'keep_freed_memory' if tuned else 'glibc default':18s} " + " ".join(f"{x:6.2f}" for x in xs)
              + f"   median {statistics.median(xs):.2f} ms")
    print(load_average())
    print(f"\nuntuned / tuned = {statistics.median(got[False]) / statistics.median(got[True]):.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
