"""Cost at size: how a run's time and memory grow with the number of images. The shared photos are
written once as 1x, 10x and 100x data sets (hard links to the same files under new names, so the
bytes read are the same kind), locally and, with ``--s3``, through the ``s3://`` path on a local
S3 server (moto, as the tests use); at each size one process (a private Ray head) does:

* ``prepare``: scan, group copies (``--groups``), split: the driver's work before any training;
* ``epoch``: one training epoch of a Lite0 head (``--image-size``, frozen backbone) with its
  validation pass, through ``run_training`` (Ray Train, 1 worker with 2 CPUs for a folder; with 1
  for a bucket, whose Ray Data reads need the other);
* ``batch``: the batch prediction job over every image (Ray Data, an actor pool of the Predictor);

and prints the time per image of each phase and the peak RSS of the driver and of each kind of
Ray worker process (sampled every 0.2 s), with its private part (``RssAnon``: RSS less the object
store's shared pages and mapped files, which a process that reads many blocks touches without
owning them). Goal: per-image time at 100x within 1.1x of 10x, and
memory that does not grow with the number of images beyond the list of their names.

    python bench/cost_at_size.py --data ../shared/data/animals15 --sizes 1,10,100 [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import rss_mib  # this folder is on sys.path when run as a script

OUT = Path(__file__).resolve().parent / "out" / "cost"


def build(data: Path, k: int) -> Path:
    """``data`` with every photo ``k`` times (``<stem>__c<i>``), written once under bench/out."""
    root = OUT / f"{k}x"
    files = [p for p in sorted(data.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if root.is_dir() and sum(1 for p in root.rglob("*") if p.is_file()) == k * len(files):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for p in files:
        d = root / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            target = d / f"{p.stem}__c{i}{p.suffix}"
            try:
                os.link(p, target)
            except OSError:
                shutil.copyfile(p, target)
    return root


class PeakRSS:
    """Peak RSS and peak private RSS (``RssAnon``) per Ray worker kind (``ray::<name>`` processes
    under the head whose temp dir is ``temp_dir``: other Rays on the machine are left out) and of
    this process (``driver``), sampled every ``every`` s."""

    def __init__(self, temp_dir: str, every: float = 0.2):
        self.temp_dir = str(temp_dir)
        self.peaks: dict[str, float] = {}
        self.anon: dict[str, float] = {}
        self.phase = "prepare"  # the driver's private peak is also kept per phase ("driver:<phase>")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _ours(self) -> list:
        import psutil

        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if self.temp_dir in " ".join(proc.info["cmdline"] or []):
                    roots.append(proc)
            except (psutil.Error, TypeError):
                continue
        seen = {}
        for r in roots:
            try:
                for c in [r, *r.children(recursive=True)]:
                    seen[c.pid] = c
            except psutil.Error:
                continue
        return list(seen.values())

    def _note(self, kind: str, pid: int) -> None:
        rss, anon = rss_mib(pid), rss_mib(pid, "RssAnon")
        self.peaks[kind] = max(self.peaks.get(kind, 0.0), rss)
        self.anon[kind] = max(self.anon.get(kind, 0.0), anon)

    def _run(self, every: float) -> None:
        import psutil

        while not self._stop.is_set():
            self._note("driver", os.getpid())
            self._note(f"driver:{self.phase}", os.getpid())
            for proc in self._ours():
                try:
                    cmd = " ".join(proc.cmdline())
                    if not cmd.startswith("ray::"):
                        continue
                    self._note(cmd.split()[0].split(".")[0][5:], proc.pid)
                except (psutil.Error, OSError, KeyError):
                    continue
            time.sleep(every)


def one_size(data: str, args: argparse.Namespace) -> dict:
    """The three phases at one size, in this process (its own Ray head); a dict of figures."""
    from animalclf.config import TrainConfig
    from animalclf.models.batch import BatchOptions, predict_batch
    from animalclf.runtime.localray import start_head
    from animalclf.train.run import prepare, run_training

    os.environ["ANIMALCLF_HOME"] = tempfile.mkdtemp(prefix="cost-")
    head = start_head(num_cpus=2)
    try:
        cfg = TrainConfig(data=data, arch="efficientnet_lite0", image_size=args.image_size, unfreeze=0, epochs=1,
                          batch_size=64, lr=1e-3, patience=0, track=False, groups=args.groups, name="cost",
                          cpus_per_worker=1 if data.startswith("s3://") else 2)  # a bucket: Ray Data reads on the other CPU
        out: dict = {"data": data}
        with PeakRSS(head.temp_dir) as peaks:
            t0 = time.perf_counter()
            split, _ = prepare(cfg)
            out["images"], out["photos"] = len(split.train) + len(split.val), split.group_count()
            out["prepare_s"] = time.perf_counter() - t0
            peaks.phase = "train"
            trained = run_training(cfg)
            epoch = trained.report["history"][-1]
            out["train_images"], out["train_s"] = epoch["train_images"], epoch["train_seconds"]
            out["val_images"], out["val_s"] = epoch.get("val_images", len(split.val)), epoch.get("val_seconds", float("nan"))
            peaks.phase = "batch"
            t1 = time.perf_counter()
            res = predict_batch(BatchOptions(model=trained.checkpoint, data=data, out=str(Path(os.environ["ANIMALCLF_HOME"]) / "pred"),
                                             concurrency=2, num_cpus=1))
            out["batch_images"], out["batch_s"] = res.written, time.perf_counter() - t1
        # the workers that hold data; _Pass: the driver's evaluation actor (animalclf.runtime.isolate)
        kinds = ("RayTrainWorker", "TrainController", "MapWorker", "execute", "_Pass")
        out["worker_peak_mib"] = {k: round(v) for k, v in sorted(peaks.peaks.items()) if k.startswith(kinds)}
        out["worker_anon_mib"] = {k: round(v) for k, v in sorted(peaks.anon.items()) if k.startswith(kinds)}
        out["driver_anon_mib"] = round(peaks.anon.get("driver", float("nan")))
        out["driver_anon_by_phase_mib"] = {k[7:]: round(v) for k, v in peaks.anon.items() if k.startswith("driver:")}
        out["driver_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return out
    finally:
        head.stop()


def upload(root: Path, endpoint: str, bucket: str, prefix: str) -> str:
    import boto3
    from concurrent.futures import ThreadPoolExecutor

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    files = [p for p in root.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda p: client.put_object(Bucket=bucket, Key=f"{prefix}/{p.parent.name}/{p.name}", Body=p.read_bytes()),
                    files))
    return f"s3://{bucket}/{prefix}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of class folders (the 1x set)")
    p.add_argument("--sizes", default="1,10,100", help="multiples of the data set (default: 1,10,100)")
    p.add_argument("--image-size", type=int, default=64, help="training crop (default: 64)")
    p.add_argument("--groups", default="auto", help="--groups of the runs (default: auto)")
    p.add_argument("--s3", action="store_true", help="also through s3:// on a local moto server")
    p.add_argument("--no-folder", action="store_true", help="only the s3:// runs (with --s3)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size here, print JSON
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args)), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    malloc = "".join(f"{k}={v} " for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))  # glibc settings in force
    print(f"command: {malloc}python bench/cost_at_size.py --data {args.data} --sizes {args.sizes} --image-size {args.image_size} "
          f"--groups {args.groups}{' --s3' if args.s3 else ''}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
          flush=True)
    where = [(k, "folder", str(build(Path(args.data), k))) for k in sizes]
    if args.no_folder:
        where = []
    server = None
    if args.s3:
        port = 5599
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(3)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        for k in sizes:
            t0 = time.perf_counter()
            where.append((k, "s3", upload(OUT / f"{k}x", os.environ["AWS_ENDPOINT_URL"], "cost", f"{k}x")))
            print(f"uploaded {k}x in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    try:
        for k, kind, data in where:
            r = subprocess.run([sys.executable, __file__, "--data", args.data, "--image-size", str(args.image_size),
                                "--groups", args.groups, "--one", data], capture_output=True, text=True)
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{k}x {kind}: failed\n{r.stderr[-3000:]}", flush=True)
                continue
            res = json.loads(line[len("RESULT "):])
            res.update(size=k, kind=kind, load=os.getloadavg()[0])
            rows.append(res)
            print(json.dumps(res), flush=True)
    finally:
        if server is not None:
            server.terminate()
    print("\n| data | images (photos) | prepare ms/img | train epoch ms/img | validation ms/img | batch job ms/img | "
          "driver peak MiB (private) | worker peaks MiB (private) | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ms = lambda s, n: 1000 * r[s] / max(1, r[n])  # noqa: E731
        anon = r.get("worker_anon_mib", {})
        workers = ", ".join(f"{k} {v} ({anon.get(k, '-')})" for k, v in r["worker_peak_mib"].items())
        print(f"| {r['size']}x {r['kind']} | {r['images']} ({r['photos']}) | {ms('prepare_s', 'images'):.2f} | "
              f"{ms('train_s', 'train_images'):.2f} | {ms('val_s', 'val_images'):.2f} | {ms('batch_s', 'batch_images'):.2f} | "
              f"{r['driver_peak_mib']} ({r.get('driver_anon_mib', '-')}) | {workers} | {r['load']:.1f} |")
    for kind in ("folder", "s3"):
        by = {r["size"]: r for r in rows if r["kind"] == kind}
        if 10 in by and 100 in by:
            for phase, n in (("train_s", "train_images"), ("batch_s", "batch_images"), ("prepare_s", "images")):
                a, b = by[10][phase] / by[10][n], by[100][phase] / by[100][n]
                print(f"{kind} {phase[:-2]}: per-image time at 100x / 10x = {b / a:.2f}x")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
