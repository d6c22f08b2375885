"""What a model costs per request in-process: the Predictor's decode + preprocess + forward + top-5
for one photo, for several model setups side by side in one run (alternating rounds), as the
ratio to the first.

    python bench/model_cost.py [--image PHOTO] [--n 40] [--rounds 3]

Setups: Lite0 224 px (the serving benches' model), Lite2 260 px, Lite2 260 px with autocontrast
and the rotation pool (what ``make demo`` ships). Untrained heads on ImageNet backbones: the
compute of a trained model. Torch threads: all CPUs (the Predictor's default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import load_average, make_model, photo_bytes, timed

SETUPS = {  # make_model's fields; image_size None = the weights' own (224 for Lite0, 260 for Lite2)
    "lite0 224": dict(arch="efficientnet_lite0", image_size=None),
    "lite2 260": dict(arch="efficientnet_lite2", image_size=None),
    "lite2 260 autocontrast+rotation pool": dict(arch="efficientnet_lite2", image_size=None, autocontrast=True,
                                                 rotation_pool=True),
}


def time_one(pred, data: bytes, n: int) -> float:
    """Median milliseconds of decode + predict (top-5) for ``data``."""
    return statistics.median(timed(lambda: pred.predict([pred.decode(data)], top_k=5), n, 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default=None, help="photo to send (default: the first shared Cat photo)")
    p.add_argument("--n", type=int, default=40, help="requests per setup per round (default: 40)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    args = p.parse_args()
    data = photo_bytes(args.image)
    print(f"command: python bench/model_cost.py --n {args.n} --rounds {args.rounds}; {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        from animalclf.models.predict import Predictor

        preds = {name: Predictor.from_checkpoint(make_model(str(Path(tmp) / str(i)), **fields))
                 for i, (name, fields) in enumerate(SETUPS.items())}
        for pred in preds.values():
            time_one(pred, data, 3)  # warm-up
        medians: dict[str, list[float]] = {name: [] for name in preds}
        for r in range(args.rounds):
            for name, pred in preds.items():
                medians[name].append(time_one(pred, data, args.n))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in medians.items())
                  + f"; {load_average()}", flush=True)
    base = statistics.median(medians[next(iter(SETUPS))])
    for name, values in medians.items():
        m = statistics.median(values)
        print(f"{name}: p50 {m:.1f} ms per request (median of round medians), {m / base:.2f}x the first")
    print(load_average())


if __name__ == "__main__":
    main()
