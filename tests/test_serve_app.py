"""Ray Serve for real: one local Serve app (Lite0, 64 px) on a free loopback port, real HTTP,
real photos. Bad uploads are 4xx JSON and never hurt the replica; overload is 503; a model swap
under traffic fails no request; our metrics reach Ray's Prometheus endpoint."""

from __future__ import annotations

import http.client
import io
import json
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from animalclf.models.checkpoint import save_checkpoint
from animalclf.config import TrainConfig
from animalclf.models.build import build_model
from animalclf.data.decode import MAX_BYTES
from animalclf.models.predict import Predictor
from animalclf.runtime.localray import free_port
from animalclf.train.worker import checkpoint_meta

pytestmark = [pytest.mark.slow, pytest.mark.ray]
BODY_TIMEOUT_S = 3.0  # the test app's limit for a request body to arrive

CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def make_checkpoint(d: Path, image_size: int, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)  # a different random head per checkpoint: different answers
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=image_size)
    model = build_model(cfg.arch, len(CLASSES), 0, "imagenet")
    return save_checkpoint(d, model, checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_ckpt")
    return make_checkpoint(root / "a", 64, 0), make_checkpoint(root / "b", 80, 1)


@pytest.fixture(scope="module")
def photos(shared_data) -> list[Path]:
    return [sorted((shared_data / c).iterdir())[0] for c in ("Cat", "Elephant", "Zebra")]


@pytest.fixture(scope="module")
def endpoint(ray_session, checkpoints):
    """Tiny queue limits so the overload test can fill them; everything else is sequential."""
    from serve import deploy

    url = deploy.start(str(checkpoints[0]), port=free_port(), max_ongoing_requests=2, max_queued_requests=2,
                       max_batch_size=4, batch_wait_timeout_s=0.01, body_timeout_s=BODY_TIMEOUT_S)
    yield url
    deploy.stop()


@pytest.fixture(scope="module")
def local(checkpoints) -> dict[str, Predictor]:
    return {str(c.resolve()): Predictor.from_checkpoint(c) for c in checkpoints}


def expected(local: dict[str, Predictor], version: str, path: Path, k: int = 5) -> list[dict]:
    p = local[version[len("checkpoint:"):]]
    return p.predict([p.decode(path.read_bytes())], k)[0]


def same(a: list[dict], b: list[dict]) -> bool:
    return [x["class"] for x in a] == [x["class"] for x in b] and all(
        abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(a, b))


def health(url: str) -> dict:
    """/healthz says ready and nothing more; what a replica serves comes through Ray (a handle)."""
    from serve import deploy

    r = requests.get(f"{url}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    return deploy.replica_status()


# ---------------------------------------------------------------------------------------------
def test_predict_multipart_and_raw_match_in_process(endpoint, photos, local):
    for path in photos:
        r = requests.post(f"{endpoint}/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"].startswith("checkpoint:") and body["latency_ms"] > 0
        assert len(body["predictions"]) == 5
        probs = [p["probability"] for p in body["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert same(body["predictions"], expected(local, body["model_version"], path))
        raw = requests.post(f"{endpoint}/predict?top_k=2", data=path.read_bytes(), timeout=30)
        assert raw.status_code == 200, raw.text
        assert same(raw.json()["predictions"], expected(local, body["model_version"], path, 2))


def test_batch_endpoint(endpoint, photos, local):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = requests.post(f"{endpoint}/predict/batch?top_k=3", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == len(photos)
    for res, path in zip(body["results"], photos):
        assert same(res["predictions"], expected(local, body["model_version"], path, 3))


def test_metadata_and_health(endpoint, checkpoints):
    """Without an API key set, /metadata tells anyone what the model is, never where it lives."""
    meta = requests.get(f"{endpoint}/metadata", timeout=10).json()
    assert meta["classes"] == CLASSES and meta["arch"] == "efficientnet_lite0"
    assert meta["preprocess"]["crop_size"] == 64 and meta["metrics"] == {"val_accuracy": 0.5}
    assert meta["model_version"] == "checkpoint:a"  # the folder's name, not its path
    assert meta["limits"]["max_bytes"] == MAX_BYTES and meta["load_error"] is False
    assert meta["torch_threads"] == 1  # threads = the CPUs it was given
    assert meta["allocator_tuned"] is True  # glibc here: freed activations are reused (animalclf.runtime.allocator)
    assert meta["api_key_required"] is False
    text = json.dumps(meta)
    assert str(checkpoints[0].parent) not in text and "settings" not in meta and "pid" not in meta
    assert "tracking_uri" not in text and "last_load_error" not in meta
    h = health(endpoint)
    assert h["pid"] > 0 and h["replica"] and h["model_version"] == f"checkpoint:{checkpoints[0].resolve()}"


# ---------------------------------------------------------------------------------------------
def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _bad_inputs(photo: Path) -> dict[str, tuple[str, dict, int, str]]:
    """name → (path+query, requests kwargs, expected status, a word the error must contain)."""
    good = photo.read_bytes()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    corrupt = bytearray(_jpeg(Image.fromarray(noise)))
    corrupt[200:] = bytes(len(corrupt) - 200)  # valid header, zeroed scan data
    ppm = io.BytesIO()
    Image.fromarray(noise).save(ppm, "PPM")
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, "PNG")  # 48 MP in a few kB
    big = b"\xff\xd8" + bytes(MAX_BYTES)
    return {
        "empty": ("/predict", {"data": b""}, 400, "empty"),
        "empty_multipart": ("/predict", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty"),
        "not_an_image": ("/predict", {"files": {"file": ("a.txt", b"hello, not a photo", "text/plain")}}, 415, "not an image"),
        "truncated": ("/predict", {"data": good[: len(good) // 3]}, 400, "truncated"),
        "corrupt": ("/predict", {"data": bytes(corrupt)}, 400, "corrupt"),
        "unsupported": ("/predict", {"data": ppm.getvalue()}, 415, "unsupported"),
        "too_many_bytes": ("/predict", {"data": big}, 413, "limit"),
        "too_many_bytes_multipart": ("/predict", {"files": {"file": ("a.jpg", big, "image/jpeg")}}, 413, "limit"),
        "too_many_pixels": ("/predict", {"data": bomb.getvalue()}, 413, "pixels"),
        "too_many_images": ("/predict/batch", {"files": [("files", ("a.jpg", good, "image/jpeg"))] * 17}, 413, "limit"),
        "bad_image_in_batch": ("/predict/batch", {"files": [("files", ("a.jpg", good, "image/jpeg")), ("files", ("b.jpg", b"xx", "image/jpeg"))]}, 415, "image 1"),
        "batch_not_multipart": ("/predict/batch", {"data": good}, 415, "multipart"),
        "wrong_field": ("/predict", {"files": {"image": ("a.jpg", good, "image/jpeg")}}, 400, "'file'"),
        "bad_top_k": ("/predict?top_k=99", {"data": good}, 400, "top_k"),
        "top_k_not_int": ("/predict?top_k=abc", {"data": good}, 400, "top_k"),
    }


def test_bad_inputs_are_4xx_json_and_replica_survives(endpoint, photos):
    before = health(endpoint)
    cases = _bad_inputs(photos[0])
    for name, (route, kw, status, word) in cases.items():
        r = requests.post(f"{endpoint}{route}", timeout=60, **kw)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.headers["content-type"].startswith("application/json"), name
        assert word.lower() in r.json()["error"].lower(), f"{name}: {r.json()}"
        ok = requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=30)
        assert ok.status_code == 200, f"after {name}: {ok.text}"
        h = health(endpoint)
        assert (h["pid"], h["replica"]) == (before["pid"], before["replica"]), f"replica changed after {name}"


def test_hostile_uploads_at_once_cost_bounded_time_and_memory(endpoint, photos):
    """A decompression bomb per format (PNG, 16-bit PNG, WebP, TIFF, GIF, RLE BMP, a GIF of many
    large frames) and a 16-bit PNG just under the decode budget, several of each at once: every
    bomb is 413 from its header, the 16-bit PNG a right-sized 200, all quickly, and the replica's
    memory is back within 200 MB of where it was."""
    import psutil
    from test_decode import bombs, encode

    for _ in range(3):  # warm: the model's own buffers are in place before the baseline
        assert requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=30).status_code == 200
    replica = psutil.Process(health(endpoint)["pid"])
    before = replica.memory_info().rss
    arr = (np.arange(3200 * 3200, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3200, 3200)
    wide = encode(Image.fromarray(arr), "PNG")
    sent = [(name, data, 413) for name, data in bombs().items()] * 3 + [("png16_at_budget", wide, 200)] * 4

    def post(item):
        name, data, _ = item
        t0 = time.perf_counter()
        while True:  # the test app's queue is tiny: Serve's own 503 (overload) means try again
            r = requests.post(f"{endpoint}/predict", data=data, timeout=60)
            if r.status_code != 503:
                return name, r.status_code, r.json(), time.perf_counter() - t0
            time.sleep(0.05)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as ex:  # as many as the test app takes at once (2 running + 2 queued)
        got = list(ex.map(post, sent))
    wall = time.perf_counter() - t0
    for (name, code, body, secs), (_, _, want) in zip(got, sent):
        assert code == want, (name, code, body)
        assert want == 200 or "MiB to decode" in body["error"], (name, body)
    assert max(secs for name, _, _, secs in got if name != "png16_at_budget") < 5, got
    assert wall < 30, wall
    time.sleep(1.0)  # the memory release runs on the decode pool after each large request
    grown = (replica.memory_info().rss - before) / 2**20
    print(f"hostile mix: {len(sent)} uploads in {wall:.2f} s, replica RSS {before / 2**20:.0f} MiB -> +{grown:.0f} MiB")
    assert grown < 200, f"the replica kept {grown:.0f} MiB after the uploads"


def test_request_deadline_stops_the_work(endpoint, photos):
    from serve import deploy

    deploy.reconfigure(deadline_s=0.0001)
    try:
        r = requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=30)
        assert r.status_code == 503 and r.headers.get("retry-after") == "1"
        assert "stopped" in r.json()["error"]
    finally:
        deploy.reconfigure(deadline_s=25.0)
    assert requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=30).status_code == 200


def _modes(photo: Path) -> dict[str, bytes]:
    base = Image.open(photo).convert("RGB").resize((96, 72))
    out = {}
    for name, im, fmt in [
        ("grayscale", base.convert("L"), "PNG"), ("rgba", base.convert("RGBA"), "PNG"),
        ("palette", base.convert("P"), "GIF"), ("cmyk", base.convert("CMYK"), "JPEG"),
        ("gray16", Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)), "PNG"),
    ]:
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[name] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    out["exif_rotated"] = _jpeg(base, exif=exif)
    for fmt in ("GIF", "WEBP"):
        frames = [base, base.rotate(90), base.convert("L").convert("RGB")]
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)
        out[f"animated_{fmt.lower()}"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(buf, "TIFF")
    out["tiff16"] = buf.getvalue()
    return out


def test_valid_modes_are_accepted(endpoint, photos):
    for name, data in _modes(photos[0]).items():
        r = requests.post(f"{endpoint}/predict", data=data, timeout=30)
        assert r.status_code == 200, f"{name}: {r.text}"
        assert len(r.json()["predictions"]) == 5


# ---------------------------------------------------------------------------------------------
def test_overload_answers_503_quickly_and_accepted_are_correct(endpoint, photos, local):
    data = photos[1].read_bytes()
    statuses: list[int] = []
    for _ in range(3):  # a few rounds in case one round's requests do not overlap enough
        barrier = threading.Barrier(32)

        def one(_):
            barrier.wait()
            t0 = time.perf_counter()
            r = requests.post(f"{endpoint}/predict", data=data, timeout=60)
            return r, time.perf_counter() - t0

        with ThreadPoolExecutor(32) as ex:
            answers = list(ex.map(one, range(32)))
        for r, dt in answers:
            statuses.append(r.status_code)
            assert r.status_code in (200, 503), f"{r.status_code}: {r.text[:200]}"
            if r.status_code == 200:
                body = r.json()
                assert same(body["predictions"], expected(local, body["model_version"], photos[1]))
            else:
                assert r.headers.get("retry-after") == "1" and dt < 10
                assert r.headers["content-type"] == "application/json" and r.json()["error"], r.text  # Serve's own 503
        if 503 in statuses:
            break
    assert 503 in statuses and 200 in statuses, statuses
    assert requests.post(f"{endpoint}/predict", data=data, timeout=30).status_code == 200


def test_model_swap_under_traffic_fails_nothing(endpoint, checkpoints, photos, local):
    from serve import deploy

    before = health(endpoint)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            r = requests.post(f"{endpoint}/predict", data=photos[2].read_bytes(), timeout=30)
            body = r.json()
            ok = r.status_code == 200 and same(body["predictions"], expected(local, body["model_version"], photos[2]))
            results.append((r.status_code if ok else -r.status_code, body.get("model_version", body.get("error"))))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        h = deploy.swap_model(str(checkpoints[1]))
        assert h["model_version"] == f"checkpoint:{checkpoints[1].resolve()}" and h["last_load_error"] is None
        time.sleep(0.5)
        h = deploy.swap_model(str(checkpoints[0]))
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert h["model_version"] == f"checkpoint:{checkpoints[0].resolve()}"
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:5]
    versions = {v for _, v in results}
    assert f"checkpoint:{checkpoints[1].resolve()}" in versions and f"checkpoint:{checkpoints[0].resolve()}" in versions
    after = health(endpoint)
    assert (after["pid"], after["replica"]) == (before["pid"], before["replica"])  # in place, no restart


def test_failed_swap_keeps_old_model_and_says_why(endpoint, checkpoints, photos, tmp_path):
    from serve import deploy

    bad = tmp_path / "not_a_checkpoint"
    bad.mkdir()
    (bad / "animalclf.json").write_text("{broken")
    h = deploy.swap_model(str(bad))
    assert h["model_version"] == f"checkpoint:{checkpoints[0].resolve()}"
    assert str(bad) in h["last_load_error"]
    meta = requests.get(f"{endpoint}/metadata", timeout=10).json()
    assert meta["load_error"] is True and str(bad) not in json.dumps(meta)  # the text is for key holders
    r = requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == f"checkpoint:{checkpoints[0].resolve()}"


def test_metrics_on_prometheus_endpoint(endpoint, ray_session, photos):
    """Counts only this test's own traffic: the counters are read until they stop moving (earlier
    tests' requests flushed), then must grow by exactly 10 answers of 200 and one of 415."""
    port = ray_session.nodes()[0]["MetricsExportPort"]
    want_ok = re.compile(r'^ray_animalclf_requests(_total)?\{[^}]*route="/predict"[^}]*status="200"[^}]*\} ([0-9.e+]+)$', re.M)
    want_err = re.compile(r'^ray_animalclf_errors(_total)?\{[^}]*status="415"[^}]*\} ([0-9.e+]+)$', re.M)
    want_lat = re.compile(r'^ray_animalclf_request_latency_ms_count\{[^}]*route="/predict"[^}]*\} ([0-9.e+]+)$', re.M)

    def totals() -> tuple[float, float, float]:  # one series per replica process: add them up
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return tuple(sum(float(m.groups()[-1]) for m in p.finditer(text)) for p in (want_ok, want_err, want_lat))

    # Replicas push their metrics every metrics_report_interval_ms (1 s on the tests' head, see
    # conftest): a count that holds still for longer than that has flushed earlier tests' requests.
    settle = 3
    before, deadline = totals(), time.monotonic() + 90
    while time.monotonic() < deadline:  # settle: two equal reads more than one push apart
        time.sleep(settle)
        now = totals()
        if now == before:
            break
        before = now
    for _ in range(10):
        assert requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=60).status_code == 200
    assert requests.post(f"{endpoint}/predict", data=b"%PDF-1.4 not an image", timeout=60).status_code == 415
    deadline, grown = time.monotonic() + 90, (0.0, 0.0, 0.0)
    while time.monotonic() < deadline:
        grown = tuple(n - b for n, b in zip(totals(), before))
        if grown[0] >= 10 and grown[1] >= 1 and grown[2] >= 11:
            break
        time.sleep(2)
    time.sleep(settle)  # nothing more may arrive
    grown = tuple(n - b for n, b in zip(totals(), before))
    assert grown == (10, 1, 11), f"ok/415/latency-count grew by {grown}, expected (10, 1, 11)"



def test_extreme_aspect_ratio_is_cheap(endpoint):
    """A 132-byte 16000x1 PNG used to cost seconds and GBs: now the centre is classified at once."""
    for size in [(16000, 1), (1, 16000)]:
        buf = io.BytesIO()
        Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
        t0 = time.perf_counter()
        r = requests.post(f"{endpoint}/predict", data=buf.getvalue(), timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5, r.text
        assert time.perf_counter() - t0 < 2.0
    huge = io.BytesIO()
    Image.new("1", (100_000, 1)).save(huge, "PNG")
    r = requests.post(f"{endpoint}/predict", data=huge.getvalue(), timeout=30)
    assert r.status_code == 413 and "longest side" in r.json()["error"]


def raw_post(url: str, path: str, chunks, pause: float = 0.0, headers: str = "") -> tuple[int, dict, float]:
    """POST with ``Transfer-Encoding: chunked`` (no Content-Length) from a plain socket, one chunk
    per ``pause`` s; stops sending once the server answers. Returns (status, JSON body, seconds)."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    t0 = time.monotonic()
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode())
        for c in chunks:
            if select.select([s], [], [], pause)[0]:
                break  # answered (or closed) before the body was complete
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            except OSError:
                break
        else:
            s.sendall(b"0\r\n\r\n")
        resp = http.client.HTTPResponse(s)
        resp.begin()
        text = resp.read()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"error": f"not JSON: {text[:200]!r}"}
        return resp.status, body, time.monotonic() - t0
    finally:
        s.close()


def test_chunked_body_over_the_limit_is_413_while_streaming(endpoint, photos):
    mib = bytes(1024 * 1024)
    status, body, _ = raw_post(endpoint, "/predict", (mib for _ in range(MAX_BYTES // len(mib) + 4)))
    assert status == 413 and "limit" in body["error"], body
    boundary = "xYzBoundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    parts = [head] + [mib] * (MAX_BYTES // len(mib) + 4)
    status, body, _ = raw_post(endpoint, "/predict", parts,
                               headers=f"Content-Type: multipart/form-data; boundary={boundary}\r\n")
    assert status == 413 and "limit" in body["error"], body
    small = photos[0].read_bytes()  # a chunked upload under the limit still works
    status, body, _ = raw_post(endpoint, "/predict", [small[:1000], small[1000:]])
    assert status == 200 and len(body["predictions"]) == 5


def test_slow_body_is_cut_off_and_others_are_served(endpoint, photos):
    """Two clients send one byte a second, taking both of the app's request slots
    (max_ongoing_requests=2): each gets 408 after BODY_TIMEOUT_S instead of holding its slot for
    minutes, and a normal request sent meanwhile (queued behind them) is answered."""
    before = health(endpoint)
    with ThreadPoolExecutor(2) as ex:
        slow = [ex.submit(raw_post, endpoint, "/predict", (b"x" for _ in range(120)), 1.0) for _ in range(2)]
        time.sleep(0.5)
        t0 = time.perf_counter()
        r = requests.post(f"{endpoint}/predict", data=photos[0].read_bytes(), timeout=60)
        assert r.status_code == 200, r.text
        assert time.perf_counter() - t0 < BODY_TIMEOUT_S + 5
        for f in slow:
            status, body, seconds = f.result(timeout=60)
            assert status == 408 and "did not arrive" in body["error"], body
            assert BODY_TIMEOUT_S - 0.5 < seconds < BODY_TIMEOUT_S + 5, seconds
    after = health(endpoint)
    assert (after["pid"], after["replica"]) == (before["pid"], before["replica"])


def test_two_forward_workers_split_batches_and_answer_like_in_process(endpoint, checkpoints, photos, local):
    """``num_threads=2`` gives a replica two one-thread forward passes side by side: a batch of three
    with ``images_per_pass=1`` runs as three passes on the two workers, with 2 as passes of 2 and 1
    (put back in order), and single requests without batching run two at a time; every answer is the in-process
    Predictor's for that photo."""
    from ray import serve

    from serve.app import build_app

    args = {"model_ref": str(checkpoints[0]), "num_threads": 2, "max_batch_size": 4, "batch_wait_timeout_s": 0.05,
            "images_per_pass": 1}
    serve.run(build_app(args), name="two", route_prefix="/two")
    url = f"{endpoint}/two"
    try:
        meta = requests.get(f"{url}/metadata", timeout=10).json()
        assert (meta["forward_workers"], meta["threads_per_forward"], meta["torch_threads"]) == (2, 1, 2)
        assert meta["batching"]["images_per_pass"] == 1
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        r = requests.post(f"{url}/predict/batch?top_k=3", files=files, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == len(photos) == 3
        for res, path in zip(r.json()["results"], photos):
            assert same(res["predictions"], expected(local, r.json()["model_version"], path, 3))
        serve.run(build_app({**args, "images_per_pass": 2}), name="two", route_prefix="/two")  # in place: parts of 2 and 1
        r = requests.post(f"{url}/predict/batch?top_k=3", files=files, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == len(photos)
        for res, path in zip(r.json()["results"], photos):
            assert same(res["predictions"], expected(local, r.json()["model_version"], path, 3))
        serve.run(build_app({**args, "max_batch_size": 1}), name="two", route_prefix="/two")  # in place
        assert requests.get(f"{url}/metadata", timeout=10).json()["batching"]["max_batch_size"] == 1
        sent = photos * 3
        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(lambda p: requests.post(f"{url}/predict?top_k=3", data=p.read_bytes(), timeout=30), sent))
        assert len(got) == len(sent) == 9
        for resp, path in zip(got, sent):
            assert resp.status_code == 200, resp.text
            assert same(resp.json()["predictions"], expected(local, resp.json()["model_version"], path, 3))
    finally:
        serve.delete("two")


def test_batches_split_into_contiguous_near_equal_parts():
    from serve.app import Classifier

    split = Classifier.func_or_class._split
    assert split([0, 1, 2], 2) == [[0, 1], [2]]
    assert split([0, 1, 2, 3, 4, 5, 6], 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([0, 1], 4) == [[0], [1]]  # never an empty part
    assert split([7], 1) == [[7]] and split([], 2) == []


# --- the contract: OpenAPI, fuzzed; Open Inference Protocol v2 with a real client ---------------------
def test_openapi_documents_bodies_top_k_answers_and_errors(endpoint):
    doc = requests.get(f"{endpoint}/openapi.json", timeout=10).json()
    predict = doc["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) >= {"multipart/form-data", "application/octet-stream"}
    assert predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert [p["name"] for p in predict["parameters"]] == ["top_k"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    for code in ("400", "401", "408", "413", "503"):
        assert predict["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    schemas = doc["components"]["schemas"]
    assert set(schemas["Prediction"]["properties"]) == {"class", "probability"}
    batch = doc["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert batch["properties"]["files"]["type"] == "array"
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/infer"} <= set(doc["paths"])
    # one error shape for what FastAPI answers by itself too
    r = requests.get(f"{endpoint}/no/such/route", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = requests.post(f"{endpoint}/predict", params={"top_k": "many"}, data=b"x", timeout=10)
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_schemathesis_fuzzing_finds_no_5xx_and_no_schema_break(endpoint, tmp_path):
    """A property-based API tester generates requests from our own /openapi.json (bodies, top_k,
    paths, OIP inference bodies) and checks every answer: no 5xx, status and body as documented."""
    import subprocess
    import sys

    st = Path(sys.executable).parent / "st"
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    r = subprocess.run([str(st), "run", f"{endpoint}/openapi.json", "--checks", checks, "--max-examples", "25",
                        "--seed", "7", "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
                        "--no-color", "--report", "junit", "--report-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    ops = len([m for path in requests.get(f"{endpoint}/openapi.json", timeout=10).json()["paths"].values() for m in path])
    assert f"Tested: {ops}" in out, out[-3000:]  # every operation was exercised ...
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 100, out[-3000:]  # ... many times


def test_open_inference_protocol_with_tritonclient(endpoint, photos, local):
    """tritonclient (Triton's official HTTP client, which KServe users point at OIP servers) talks
    to us: health, metadata, and inference with BYTES tensors, binary and JSON, answering what
    /predict answers."""
    from tritonclient.http import InferenceServerClient, InferenceServerException, InferInput, InferRequestedOutput
    from tritonclient.utils import InferenceServerException as UtilsError

    client = InferenceServerClient(url=endpoint.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("animalclf")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert client.is_model_ready("animalclf")
    blobs, served = [p.read_bytes() for p in photos], checkpoint_of(endpoint)
    for binary in (True, False):
        x = InferInput("image", [len(blobs)], "BYTES")
        if binary:
            x.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=True)
        else:  # JSON: BYTES as base64 strings
            import base64

            x.set_data_from_numpy(np.array([base64.b64encode(b) for b in blobs], dtype=np.object_), binary_data=False)
        outs = [InferRequestedOutput("class", binary_data=binary), InferRequestedOutput("probability", binary_data=binary)]
        result = client.infer("animalclf", [x], outputs=outs, parameters={"top_k": 3})
        classes, probs = result.as_numpy("class"), result.as_numpy("probability")
        assert classes.shape == probs.shape == (len(blobs), 3)
        for i, path in enumerate(photos):
            want = expected(local, f"checkpoint:{served}", path, 3)
            got = [{"class": c.decode() if isinstance(c, bytes) else c, "probability": float(p)}
                   for c, p in zip(classes[i], probs[i])]
            assert same(got, want), (path.name, got, want)
    with pytest.raises((InferenceServerException, UtilsError), match="no model 'other'"):
        client.infer("other", [x])
    bad = InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises((InferenceServerException, UtilsError), match="not an image"):
        client.infer("animalclf", [bad])


def checkpoint_of(endpoint: str) -> str:
    """The checkpoint directory the endpoint's replicas serve now."""
    from serve import deploy

    return deploy.replica_status()["model_ref"]
