"""What a model costs to serve, measured the same way for every model the gate compares: the
:class:`~animalclf.models.predict.Predictor` answering one photo at a time on one thread, decode
and preprocessing included (what one request to Serve costs a replica), in rounds that alternate
between the models so that a drifting machine slows them alike."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from animalclf.models.predict import Predictor

__all__ = ["measure", "ms_per_photo"]


def ms_per_photo(predictor: "Predictor", photos: Sequence[bytes]) -> float:
    """Mean milliseconds per photo of one pass: decode, preprocess, forward, top-5, one at a time."""
    start = time.perf_counter()
    for data in photos:
        predictor.predict([predictor.decode(data)], top_k=5)
    return 1000 * (time.perf_counter() - start) / len(photos)


def measure(predictors: Sequence["Predictor"], photos: Sequence[bytes], rounds: int = 3, threads: int = 1) -> list[float]:
    """Each predictor's ms per photo (median over ``rounds`` alternating passes, after one warm-up
    photo each) on ``threads`` torch threads; the caller's thread count is restored after."""
    import torch

    if not photos:
        raise ValueError("measuring cost needs at least one photo")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for p in predictors:
            ms_per_photo(p, photos[:1])
        times: list[list[float]] = [[] for _ in predictors]
        for _ in range(rounds):
            for i, p in enumerate(predictors):
                times[i].append(ms_per_photo(p, photos))
    finally:
        torch.set_num_threads(before)
    return [statistics.median(t) for t in times]
