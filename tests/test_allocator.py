"""The allocator setting: freed tensor buffers are reused instead of page-faulted in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from animalclf.runtime.allocator import keep_freed_memory

    def faults(n=20):  # minor page faults over n rounds of 4 x 4 MiB buffers, like a forward pass's activations
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            bufs = [torch.empty(1 << 20).fill_(1.0) for _ in range(4)]
            del bufs
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(2)
    untuned = faults()
    ok = keep_freed_memory()
    faults(2)
    print(json.dumps({"ok": ok, "untuned": untuned, "tuned": faults()}))
""")


def test_freed_buffers_are_reused_not_faulted_in_again():
    # glibc's own thresholds adapt to what the process did before; pinned small here (as they start),
    # every round gets fresh pages from the kernel until keep_freed_memory() raises them.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    pages_per_round = 4 * (4 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert r["ok"] is True
    assert r["untuned"] >= 10 * pages_per_round, r  # 20 rounds: each faults its 16 MiB in again
    assert r["tuned"] <= 3 * pages_per_round, r  # the heap grows once (a round or two), then is reused


def test_thresholds_outside_what_mallopt_takes_are_refused():
    import pytest

    from animalclf.runtime.allocator import MAX_MIB, keep_freed_memory

    for bad in (0, MAX_MIB + 1):
        with pytest.raises(ValueError, match="mmap_threshold_mib"):
            keep_freed_memory(bad)
