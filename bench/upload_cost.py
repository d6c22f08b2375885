"""What a hostile or just large upload costs: a 12-megapixel phone JPEG vs a 224 px photo, and a
16000x1 PNG, in-process and over HTTP through Ray Serve, with the replica's memory before/after.

    python bench/upload_cost.py [--image JPEG] [--n 30] [--alternations 5] [--rounds 2]
                                [--ingress python|haproxy] [--smoke-test]

``--alternations``: rounds in which the three images take turns (latency); ``--rounds``: rounds
of 10 x n strips with the replica's memory read after each.

Targets: the 12 MP JPEG's p50 <= 2x the 224 px photo's; the 16000x1 PNG answered (4xx or a
right-sized 200) in < 100 ms with no memory growth in the replica.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile

import numpy as np
import requests
import torch
from PIL import Image

from animalclf.runtime.localray import free_port
from common import INGRESS, alternating, like_replica, make_model, photo_bytes, ray_head, rss_mib, timed


def phone_jpeg(photo: bytes, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12 MP JPEG like a phone's (quality 92, sensor-like noise, EXIF orientation): the photo
    upscaled, so it is a real scene rather than noise that would not compress."""
    im = Image.open(io.BytesIO(photo)).convert("RGB").resize(size, Image.BICUBIC)
    noise = np.random.default_rng(0).integers(-10, 11, (size[1], size[0], 3))
    im = Image.fromarray(np.clip(np.asarray(im, np.int16) + noise, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 1
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


def strip_png(size: tuple[int, int] = (16000, 1)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


def _at_least_2(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 2 rounds (the growth is measured after the first)")
    return int(text)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Cost of large and extreme uploads", add_help=add_help)
    p.add_argument("--n", type=int, default=30, help="timed requests per image and path (default: 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default: 5)")
    p.add_argument("--rounds", type=_at_least_2, default=2, help="rounds of 10 x n 16000x1 PNGs, replica RSS after each (default: 2)")
    p.add_argument("--alternations", type=int, default=5,
                   help="rounds in which the images take turns, for the latency figures (default: 5)")
    p.add_argument("--ingress", choices=list(INGRESS), default="python",
                   help="HTTP ingress: Ray's Python proxy or the HAProxy one (default: python)")
    p.add_argument("--image", default=None, help="the 224 px photo (default: the first shared Cat photo)")
    p.add_argument("--smoke-test", action="store_true", help="n=3, warmup=1, alternations=1")
    return p


def main(args: argparse.Namespace) -> None:
    from animalclf.models.predict import Predictor
    from serve import deploy

    if args.smoke_test:
        args.n, args.warmup, args.alternations = 3, 1, 1
    small = photo_bytes(args.image)
    big, strip = phone_jpeg(small), strip_png()
    images = {f"224 px photo ({len(small) // 1024} KiB)": small,
              f"12 MP phone JPEG ({len(big) / 2**20:.1f} MiB)": big,
              f"16000x1 PNG ({len(strip)} B)": strip}
    from serve.settings import ServeSettings

    threads = torch.get_num_threads()
    like_replica()  # the in-process side's allocator as a replica's (ServeSettings.mmap_threshold_mib)
    torch.set_num_threads(ServeSettings().threads_per_forward)  # and its threads: one forward pass's
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(os.path.join(tmp, "lite0"))
        p = Predictor.load(model)
        local = alternating({name: (lambda d=data: p.predict([p.decode(d)], 5)) for name, data in images.items()},
                            args.n, args.warmup, args.alternations)
        rows += [("in-process", name, xs) for name, xs in local.items()]
        old = timed(lambda: p.predict_tensors(p.transform(Image.open(io.BytesIO(big)).convert("RGB"))[None]),
                    max(3, args.n // 5), 1)
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = INGRESS[args.ingress]  # read by Serve's controller at start
        with ray_head(num_cpus=4):  # a private head (token auth, loopback), stopped with its processes
            try:
                url = deploy.start(model, port=free_port(), num_cpus=min(threads, 4), max_batch_size=1,
                                   batch_wait_timeout_s=0.0)
                s = requests.Session()
                pid = deploy.replica_status()["pid"]

                def post(data: bytes) -> None:
                    r = s.post(f"{url}/predict", data=data, timeout=60)
                    assert r.status_code < 500, r.text

                for name, data in images.items():
                    post(data)
                rss0 = rss_mib(pid)
                remote = alternating({name: (lambda d=data: post(d)) for name, data in images.items()},
                                     args.n, args.warmup, args.alternations)
                rows += [("HTTP", name, xs) for name, xs in remote.items()]
                strip_n, rss = [], []
                for _ in range(args.rounds):  # does the replica's memory settle, or grow with every request?
                    strip_n += timed(lambda: post(strip), 10 * args.n, 0)
                    rss.append(rss_mib(pid))
                status = s.post(f"{url}/predict", data=strip, timeout=60).status_code
            finally:
                deploy.stop()
    load = os.getloadavg()
    print(f"\nLite0 224 px, batch 1, replica num_cpus {min(threads, 4)}, in-process {torch.get_num_threads()} torch "
          f"thread(s) (a replica's forward pass), {os.cpu_count()} CPUs, {args.n} timed requests each "
          f"in {args.alternations} alternating rounds, ingress {args.ingress}")
    print(f"{'path':11s} {'image':34s} {'p50 ms':>8s} {'max ms':>8s} {'vs 224 px':>10s}")
    base = {}
    for path, name, xs in rows:
        base.setdefault(path, statistics.median(xs))
        print(f"{path:11s} {name:34s} {statistics.median(xs):8.2f} {max(xs):8.2f} {statistics.median(xs) / base[path]:10.2f}")
    print(f"in-process, 12 MP decoded at full size (the old path): p50 {statistics.median(old):.2f} ms")
    print(f"16000x1 PNG over HTTP: status {status}, p50 {statistics.median(strip_n):.2f} ms, max {max(strip_n):.2f} ms "
          f"over {len(strip_n)} requests; replica RSS {rss0:.0f} MiB before, then after each {10 * args.n}: "
          f"{', '.join(f'{r:.0f}' for r in rss)} MiB ({rss[-1] - rss[0]:+.0f} MiB after the first {10 * args.n})")
    print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    http = {name: statistics.median(xs) for path, name, xs in rows if path == "HTTP"}
    ratio = list(http.values())[1] / list(http.values())[0]
    print(f"\n12 MP / 224 px over HTTP = {ratio:.2f} (target <= 2): {'met' if ratio <= 2 else 'MISSED'}; "
          f"16000x1 p50 {statistics.median(strip_n):.1f} ms (target < 100): {'met' if statistics.median(strip_n) < 100 else 'MISSED'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
