"""The content-grouping threshold, measured: perceptual-hash distances (best of 8 orientations,
``animalclf.data.groups``) between every pair of photos, split by whether the file names say they
are copies of one photo (``Deer_7_2`` of ``Deer_7``). A good threshold keeps every named copy pair
within it and every other pair outside.

    python bench/near_duplicates.py --data ../shared/data/animals15
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of class folders")
    p.add_argument("--max-bits", type=int, default=20, help="print distances up to this (default: 20)")
    args = p.parse_args()
    from animalclf.data.folder import scan_folder
    from animalclf.data.groups import HASH_THRESHOLD, name_key, near_duplicate_pairs, orientation_hashes

    _, samples = scan_folder(args.data)
    paths = [s for s, _ in samples]
    print(f"command: python bench/near_duplicates.py --data {args.data}; {len(paths)} files; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    t0 = time.perf_counter()
    hashes = [orientation_hashes(Path(s).read_bytes()) for s in paths]
    t1 = time.perf_counter()
    pairs = list(near_duplicate_pairs(hashes, threshold=64))
    t2 = time.perf_counter()
    keys = [name_key(s) for s in paths]
    named = Counter(d for i, j, d in pairs if keys[i] == keys[j])
    other = Counter(d for i, j, d in pairs if keys[i] != keys[j])
    print(f"hashing {t1 - t0:.2f} s ({1000 * (t1 - t0) / len(paths):.2f} ms per file), all pairs {t2 - t1:.2f} s; "
          f"{sum(named.values())} pairs named as copies, {sum(other.values())} other pairs")
    print("| threshold (bits of 64) | named copy pairs within | other pairs within |")
    print("|---:|---:|---:|")
    for t in range(0, args.max_bits + 1, 2):
        within_named = sum(v for d, v in named.items() if d <= t)
        within_other = sum(v for d, v in other.items() if d <= t)
        mark = " (HASH_THRESHOLD)" if t == HASH_THRESHOLD else ""
        print(f"| {t}{mark} | {within_named} of {sum(named.values())} | {within_other} |")
    print(f"largest named-copy distance {max(named) if named else '-'}; smallest other {min(other) if other else '-'}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
