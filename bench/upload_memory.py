"""What hostile uploads cost a replica, with the decode budget on and off, side by side in one run.

A mix of small files that decode to far more than the budget (a PNG, a 16-bit PNG, a WebP, a TIFF,
a GIF, an RLE BMP, a GIF of many large frames) and a 16-bit PNG just under it, each sent 3 times,
4 at once, to a fresh replica (Lite0 224 px): per request time, wall time, and the replica's
resident memory before and 2 s after. ``on`` is the default ``max_decode_mib`` (64); ``off`` sets
it to 100000 MiB, i.e. the pixel limit (40 MP) alone.

    python bench/upload_memory.py [--rounds 2] [--smoke-test]

Target: every upload answered quickly (4xx, or a right-sized 200) and the replica's memory back
within 200 MB of where it was.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image

from animalclf.runtime.localray import free_port
from common import make_model, photo_bytes, ray_head, rss_mib

SETTINGS = {"on": None, "off": 100_000}  # max_decode_mib (None: the default)


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rle_bmp(side: int) -> bytes:
    """An 8-bit RLE BMP whose header says ``side`` x ``side``, in a few hundred bytes."""
    palette = b"".join(bytes((i, 255 - i, i // 2, 0)) for i in range(256))
    body = bytes((255, 7)) * 4 + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    return (b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
            + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(body), 2835, 2835, 256, 0) + palette + body)


def hostile_mix(side: int = 6000) -> dict[str, bytes]:
    """name -> bytes: one decompression bomb per format and a 16-bit PNG at the budget."""
    frames = [Image.new("P", (4000, 4000), i) for i in range(20)]
    arr = (np.arange(3200 * 3200, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3200, 3200)
    return {
        "PNG RGB": _encoded(Image.new("RGB", (side, side)), "PNG"),
        "PNG 16-bit": _encoded(Image.new("I;16", (side, side)), "PNG"),
        "WebP": _encoded(Image.new("RGB", (side, side)), "WEBP", lossless=True),
        "TIFF": _encoded(Image.new("RGB", (side, side)), "TIFF", compression="tiff_deflate"),
        "GIF": _encoded(Image.new("P", (side, side)), "GIF"),
        "BMP RLE": _rle_bmp(side),
        "GIF 20 frames": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "PNG 16-bit at budget": _encoded(Image.fromarray(arr), "PNG"),
    }


def one_round(model: str, max_decode_mib: int | None, mix: dict[str, bytes], photo: bytes, repeat: int) -> dict:
    from serve import deploy

    extra = {"max_decode_mib": max_decode_mib} if max_decode_mib else {}
    url = deploy.start(model, port=free_port(), num_cpus=2, **extra)
    try:
        for _ in range(5):
            assert requests.post(f"{url}/predict", data=photo, timeout=60).status_code == 200
        pid = deploy.replica_status()["pid"]
        before = rss_mib(pid)

        def post(item):
            name, data = item
            t0 = time.perf_counter()
            r = requests.post(f"{url}/predict", data=data, timeout=120)
            return name, r.status_code, (time.perf_counter() - t0) * 1000

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(post, list(mix.items()) * repeat))
        wall = time.perf_counter() - t0
        peak = rss_mib(pid)
        time.sleep(2)
        return {"got": got, "wall_s": wall, "before": before, "peak": peak, "after": rss_mib(pid)}
    finally:
        deploy.stop()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Hostile uploads with the decode budget on and off", add_help=add_help)
    p.add_argument("--rounds", type=int, default=2, help="rounds, each with a fresh replica per setting (default: 2)")
    p.add_argument("--repeat", type=int, default=3, help="times each file is sent per round (default: 3)")
    p.add_argument("--image", default=None, help="the warm-up photo (default: the first shared Cat photo)")
    p.add_argument("--smoke-test", action="store_true", help="one round, each file once, smaller bombs")
    return p


def main(args: argparse.Namespace) -> None:
    side = 3000 if args.smoke_test else 6000
    if args.smoke_test:
        args.rounds, args.repeat = 1, 1
    mix, photo = hostile_mix(side), photo_bytes(args.image)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ray_head(num_cpus=4):
        model = make_model(os.path.join(tmp, "lite0"))
        for r in range(args.rounds):
            for name, mib in (SETTINGS.items() if r % 2 == 0 else reversed(SETTINGS.items())):
                rows.append((name, one_round(model, mib, mix, photo, args.repeat)))
    load = os.getloadavg()
    print(f"\n{len(mix)} files x {args.repeat}, 4 at once, fresh Lite0 224 px replica (num_cpus 2) per round; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'budget':7s} {'file':22s} {'statuses':14s} {'p50 ms':>8s} {'max ms':>8s}")
    for setting, res in rows:
        for name in mix:
            ms = [t for n, _, t in res["got"] if n == name]
            codes = sorted({c for n, c, _ in res["got"] if n == name})
            print(f"{setting:7s} {name:22s} {str(codes):14s} {statistics.median(ms):8.0f} {max(ms):8.0f}")
    print(f"\n{'budget':7s} {'wall s':>7s} {'RSS before':>11s} {'peak':>7s} {'2 s after':>10s} {'kept MiB':>9s}")
    for setting, res in rows:
        print(f"{setting:7s} {res['wall_s']:7.2f} {res['before']:11.0f} {res['peak']:7.0f} {res['after']:10.0f} "
              f"{res['after'] - res['before']:9.0f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
