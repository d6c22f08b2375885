"""Ctrl-C mid fine-tune: seconds from the signal to `make demo`'s exit, ours against Ray Train's.

Starts `ray_jobs/demo.py` from an empty HOME in a process group of its own, waits for its
"== 1/4" line (the fine-tune), waits ``--after`` seconds more and sends SIGINT to the group, as a
terminal's Ctrl-C does; times until the demo exits. Each round runs it twice, side by side: as
shipped (on its own head a Ctrl-C kills Ray Train's controller at once,
``animalclf.train.run._kill_on_sigint``) and with Ray Train's own handler, which waits for a
graceful abort (``drives_own_head`` patched to False, as on a Ray of others'). Prints every time,
the medians and their ratio, with the load average.

    python bench/ctrl_c.py --data ../shared/data/animals15 [--rounds 2] [--after 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, load_average

from animalclf.runtime.localray import free_port

LAUNCH = {
    "ours": "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
    "ray-train": ("import runpy, sys; import animalclf.runtime.localray as l; l.drives_own_head = lambda: False; "
                  "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"),
}


def stop_seconds(handler: str, data: str, after: float, image_size: int) -> float:
    """One demo, interrupted ``after`` s into its fine-tune: seconds from SIGINT to its exit (code 130)."""
    base = Path(tempfile.mkdtemp(prefix="ctrl-c-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "DAGSHUB_"))}
    env.update(HOME=tempfile.mkdtemp(dir=base), ANIMALCLF_HOME=str(base / "project"))
    log = base / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH[handler], str(ROOT / "ray_jobs" / "demo.py"), "--data", data, "--image-size",
             str(image_size), "--trials", "1", "--tune-epochs", "1", "--serve-port", str(free_port()), "--ui-port",
             str(free_port())], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    while "== 1/4" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the demo did not reach its fine-tune: see {log}")
        time.sleep(0.2)
    time.sleep(after)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(120)
    took = time.monotonic() - t0
    if rc != 130:
        raise SystemExit(f"{handler}: exit code {rc}, not 130: see {log}")
    shutil.rmtree(base, ignore_errors=True)  # kept only when something went wrong
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"class folders (default: {DEFAULT_DATA})")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (default: 2)")
    p.add_argument("--after", type=float, default=3.0, help="seconds into the fine-tune (default: 3)")
    p.add_argument("--image-size", type=int, default=64, help="(default: 64)")
    args = p.parse_args()
    times: dict[str, list[float]] = {h: [] for h in LAUNCH}
    for r in range(args.rounds):
        for handler in LAUNCH:
            s = stop_seconds(handler, args.data, args.after, args.image_size)
            times[handler].append(s)
            print(f"round {r + 1} {handler:9s} Ctrl-C to exit {s:5.1f} s   ({load_average()})", flush=True)
    med = {h: statistics.median(t) for h, t in times.items()}
    print(f"median: ours {med['ours']:.1f} s, Ray Train's graceful abort {med['ray-train']:.1f} s: "
          f"{med['ray-train'] / med['ours']:.1f}x longer  ({load_average()})")


if __name__ == "__main__":
    main()
