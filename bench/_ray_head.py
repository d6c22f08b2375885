"""A private Ray head for one benchmark run: ``animalclf.localray`` (the same head the tests and
the demo use: ``RAY_ADDRESS`` set before ``ray start --head``, a private temp dir, and only its
own processes killed at the end, never ``ray stop``), plus the load line the scripts print.

    from _ray_head import ray_head
    with ray_head(num_cpus=2) as address:
        ...  # ray.init(address=address) already done
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from animalclf.localray import start_head  # noqa: E402


DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals15"


def base_parser(doc: str, *, image_size: int, epochs: int, unfreeze: Optional[int] = None,
                epochs_help: str = "") -> argparse.ArgumentParser:
    """The flags every training benchmark shares: data, arch, (unfreeze), image size, batch, epochs."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"class folders (default: {DEFAULT_DATA})")
    p.add_argument("--arch", default="efficientnet_lite0", help="(default: efficientnet_lite0)")
    if unfreeze is not None:
        p.add_argument("--unfreeze", type=int, default=unfreeze, help=f"(default: {unfreeze})")
    p.add_argument("--image-size", type=int, default=image_size, help=f"(default: {image_size})")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"{epochs_help}(default: {epochs})")
    return p


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, prefix: str = "rb-") -> Iterator[str]:
    """Start a private head, ``ray.init`` to it, yield its address; shut down and clean up after."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    head = start_head(num_cpus=num_cpus)
    try:
        print(f"[ray_head] private head at {head.address} (temp {head.temp_dir}) up in {time.perf_counter() - t0:.1f}s", flush=True)
        yield head.address
    finally:
        head.stop()
