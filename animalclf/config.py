"""One typed configuration for training (and, per trial, for tuning).

The config travels to Ray workers as a plain dict (``asdict``) and is saved beside every
checkpoint and MLflow run, so a result always says how it was produced.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from animalclf.errors import UserError
from animalclf.evaluate.evidence import DEFAULT_CHEAPER_BY, DEFAULT_MIN_IMPROVEMENT, DEFAULT_NI_MARGIN
from animalclf.models.archs import ARCHS, check_unfreeze

METRICS = ("val_accuracy", "val_f1", "val_loss")
FINAL_MODES = ("refit", "ensemble", "none")  # what a --cv run publishes (training.publish_cv)
SCHEDULES = ("constant", "cosine")  # learning rate over epochs (animalclf.train.engine.lr_factor)
HEAD_INITS = ("random", "probe")  # how the new head starts (animalclf.train.probe)
AUGMENTS = ("standard", "invariant")  # training augmentation (animalclf.data.transforms.train_transform)
TEACHER_CHAMPION = "champion"  # --teacher with no REF: the model name's current @champion, pinned at start
GROUP_MODES = ("auto", "names", "none")  # how copies are found (animalclf.data.groups, which checks it is the same)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # files read as images


def better(value: float, best: Optional[float], mode: str) -> bool:
    """Whether ``value`` beats ``best`` (``None``: anything does) for a metric that ``mode`` ("max"
    or "min") optimises."""
    return best is None or (value > best if mode == "max" else value < best)


def project_dir() -> Path:
    """Where run outputs go by default: ``$ANIMALCLF_HOME`` or the current directory."""
    return Path(os.environ.get("ANIMALCLF_HOME", ".")).resolve()


def runs_dir() -> Path:
    """Everything runs write locally: Ray storage, exported models, reports, the MLflow store."""
    return project_dir() / "runs"


def check_runs_dir() -> Path:
    """``runs_dir()``, refused when it would land in Ray's temporary copy of a job's working dir
    (deleted once no job uses it)."""
    out = runs_dir()
    if "ANIMALCLF_HOME" not in os.environ and "runtime_resources" in out.parts:
        raise UserError(f"Outputs would go to {out}, inside Ray's temporary copy of the job's working directory: "
                        f"set ANIMALCLF_HOME to a lasting folder (shared storage on a cluster) in the job's env "
                        f"(mk/jobs.mk passes this checkout's path).")
    return out


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs; defaults follow the original notebook."""

    # data
    data: Optional[str] = None
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    val_ratio: float = 0.2
    groups: str = "auto"  # copies of one photo kept on one side of a split or fold (animalclf.data.groups)
    seed: int = 42
    image_size: Optional[int] = None  # crop size; None = the weights' own (224)
    loader_workers: int = 0
    # model
    arch: str = "efficientnet_b0"
    weights: str = "imagenet"
    unfreeze: int = 10
    dropout: float = 0.2
    head_init: str = "random"  # HEAD_INITS: "probe" fits the head on frozen features before epoch 1
    freeze_bn: bool = False  # every BatchNorm keeps its pretrained statistics (eval mode) while training
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: evaluate, checkpoint and serve an exponential moving average of the weights
    schedule: str = "constant"  # SCHEDULES: the lr each epoch is lr x engine.lr_factor(...)
    warmup_epochs: int = 0  # cosine: epochs of linear warm-up before the decay
    schedule_epochs: Optional[int] = None  # the schedule's length when not `epochs` (a refit stops early on it)
    batch_size: int = 64  # global batch, split over workers
    epochs: int = 10
    patience: int = 3
    max_steps_per_epoch: Optional[int] = None
    channels_last: bool = True
    amp: bool = True  # only takes effect on GPU
    # scale
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    # custom Ray resources each worker also asks for, e.g. {"a10g": 1}: where workers may land
    worker_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    keep_checkpoints: int = 2
    metric: str = "val_accuracy"
    # outputs and tracking
    name: str = "animalclf"
    storage_path: Optional[str] = None
    experiment: str = "animalclf"
    model_name: Optional[str] = "animalclf"
    # promotion of the registered version to @champion (animalclf.evaluate.registry)
    force_promote: bool = False
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    # or no worse by more than this margin (a paired non-inferiority test) and cheaper by this factor
    ni_margin: float = DEFAULT_NI_MARGIN
    cheaper_by: float = DEFAULT_CHEAPER_BY
    max_ms_per_photo: Optional[float] = None  # a candidate slower than this per photo never becomes champion
    track: bool = True
    # cross-validation (animalclf.data.folds): K stratified folds over all samples, scored by the fold mean
    cv: int = 0  # 0 = one train/val split
    final: str = "refit"  # after CV: refit on every sample for the chosen epochs, or ensemble the fold models
    tta_flip: bool = False  # stored in animalclf.json: the Predictor averages each image with its mirror
    # stored in animalclf.json, so training, evaluation and serving all apply them (animalclf.models.build)
    autocontrast: bool = False  # stretch each colour channel to its full range before the resize
    rotation_pool: bool = False  # the head sees the mean of the features of the 4 quarter turns
    augment: str = "standard"  # AUGMENTS: "invariant" adds quarter turns and strong brightness changes
    # distillation (animalclf.train.distill): the loss mixes a teacher's softened probabilities with the labels
    teacher: Optional[str] = None  # a checkpoint dir or models:/ URI; TEACHER_CHAMPION = @champion; None = off
    kd_weight: float = 0.5  # share of the teacher's term in the loss (0 = labels only, 1 = teacher only)
    kd_temperature: float = 2.0  # softens both distributions in the teacher's term

    @property
    def mode(self) -> str:
        return "min" if self.metric.endswith("loss") else "max"

    def resolved_storage(self) -> str:
        """``storage_path`` or ``<project>/runs/ray``."""
        return self.storage_path or str(runs_dir() / "ray")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        """Check values that do not need the data or the model; raise :class:`UserError`."""
        check_unfreeze(self.arch, self.unfreeze)  # the arch's name is checked there too
        if not (self.data or (self.train_dir and self.val_dir)):
            raise UserError("No data given: pass --data DIR (class folders) or both --train-dir and --val-dir.")
        if self.data and (self.train_dir or self.val_dir):
            raise UserError("Pass either --data or --train-dir/--val-dir, not both.")
        if self.groups not in GROUP_MODES:
            raise UserError(f"--groups {self.groups!r}: choose one of {', '.join(GROUP_MODES)}.")
        if not 0.0 < self.val_ratio < 1.0:
            raise UserError(f"--val-ratio {self.val_ratio} must be between 0 and 1 (exclusive), e.g. 0.2.")
        if self.lr < 0:
            raise UserError(f"--lr must be positive, got {self.lr}.")
        if self.lr == 0 and not (self.head_init == "probe" and self.unfreeze == 0 and self.epochs == 1):
            raise UserError("--lr 0 keeps the linear probe as the model: use it with --head-init probe --unfreeze 0 "
                            "--epochs 1, or give a positive --lr.")
        for name in ("batch_size", "epochs", "num_workers"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")
        if self.batch_size < self.num_workers:
            raise UserError(f"--batch-size {self.batch_size} is smaller than --num-workers {self.num_workers}.")
        if self.metric not in METRICS:
            raise UserError(f"Unknown metric {self.metric!r}: choose one of {', '.join(METRICS)}.")
        if self.cv == 1 or self.cv < 0:
            raise UserError(f"--cv {self.cv}: pass K >= 2 folds (e.g. --cv 5), or 0 for one train/val split.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema-decay {self.ema_decay} must be at least 0 (off) and below 1, e.g. 0.9.")
        if self.head_init not in HEAD_INITS:
            raise UserError(f"Unknown --head-init {self.head_init!r}: choose one of {', '.join(HEAD_INITS)}.")
        if self.final not in FINAL_MODES:
            raise UserError(f"Unknown --final {self.final!r}: choose one of {', '.join(FINAL_MODES)}.")
        if self.schedule not in SCHEDULES:
            raise UserError(f"Unknown --schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise UserError(f"schedule_epochs {self.schedule_epochs} is shorter than --epochs {self.epochs}: leave it "
                            f"unset (the schedule then spans --epochs).")
        if not 0 <= self.warmup_epochs < (self.schedule_epochs or self.epochs):
            raise UserError(f"--warmup-epochs {self.warmup_epochs} must be at least 0 and fewer than the schedule's "
                            f"{self.schedule_epochs or self.epochs} epochs (--epochs).")
        if self.warmup_epochs and self.schedule != "cosine":
            raise UserError(f"--warmup-epochs {self.warmup_epochs} only applies to --schedule cosine: add it or drop the warm-up.")
        if self.final == "ensemble" and self.cv < 2:
            raise UserError("--final ensemble averages the fold models of a cross-validation: add --cv K (e.g. --cv 5).")
        if self.augment not in AUGMENTS:
            raise UserError(f"Unknown --augment {self.augment!r}: choose one of {', '.join(AUGMENTS)}.")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise UserError(f"--kd-weight {self.kd_weight} must be between 0 (labels only) and 1 (teacher only), e.g. 0.5.")
        if self.kd_temperature <= 0:
            raise UserError(f"--kd-temperature {self.kd_temperature} must be positive, e.g. 2.")
        if self.teacher and self.lr == 0:
            raise UserError("--teacher has nothing to teach with --lr 0 (the linear probe alone): give a positive --lr "
                            "or drop --teacher.")
        if not 0.0 <= self.ni_margin < 1.0:
            raise UserError(f"--non-inferiority-margin {self.ni_margin} is a fraction of accuracy in [0, 1), e.g. 0.01 "
                            f"(one point); 0 turns the cheaper-model rule off.")
        if self.cheaper_by < 1.0:
            raise UserError(f"--cheaper-by {self.cheaper_by} must be at least 1 (how many times cheaper per photo), e.g. 3.")
        if self.max_ms_per_photo is not None and self.max_ms_per_photo <= 0:
            raise UserError(f"--max-ms-per-photo {self.max_ms_per_photo} must be positive, e.g. 50.")
        if self.image_size is not None and self.image_size < 32:
            raise UserError(f"--image-size {self.image_size} is too small: use 32 or more.")
        return self


def resources_arg(text: str) -> dict[str, float]:
    """``--worker-resources`` / ``--serve-resources``: a JSON object of custom resource names to amounts."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in value.values()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object of amounts, e.g. '{{\"a10g\": 1}}'")
    if {"CPU", "GPU"} & set(value):
        raise argparse.ArgumentTypeError("CPU and GPU have their own flags (training: --cpus-per-worker, --use-gpu; "
                                         "serving: num_cpus, num_gpus)")
    return value


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the :class:`TrainConfig` flags (kebab-case, defaults shown) to ``parser``."""
    d = TrainConfig()
    g = parser.add_argument_group("Data")
    g.add_argument("--data", help="folder (or s3:// URI) of class folders, split train/val by --val-ratio")
    g.add_argument("--train-dir", help="explicit training folder of class folders")
    g.add_argument("--val-dir", help="explicit validation folder of class folders")
    g.add_argument("--val-ratio", type=float, default=d.val_ratio, help=f"(default: {d.val_ratio})")
    g.add_argument("--groups", default=d.groups, choices=GROUP_MODES,
                   help="keep copies of one photo (turned, darkened, cropped; bursts) on one side of the split and of "
                        "every CV fold: auto = by file name (Deer_7_2 of Deer_7) and by a perceptual hash; names = by "
                        "file name only; none = per file, as before (default: auto)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    g.add_argument("--image-size", type=int, default=d.image_size, help="crop size (default: the weights')")
    g.add_argument("--loader-workers", type=int, default=d.loader_workers, help="DataLoader processes (default: 0)")
    g.add_argument("--cv", type=int, default=d.cv, metavar="K",
                   help="K-fold stratified cross-validation over all images (train+val); scores are fold means "
                        "with the std beside them (default: 0 = one split)")
    g.add_argument("--final", default=d.final, choices=FINAL_MODES,
                   help="after --cv: refit = train on all images for the epoch count with the best fold mean; "
                        "ensemble = one model that averages the K fold models' probabilities at that epoch; "
                        "none = only the CV figures (default: refit)")
    g.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=d.tta_flip,
                   help="serve with horizontal-flip test-time augmentation (stored in animalclf.json; default: off)")
    g.add_argument("--autocontrast", action=argparse.BooleanOptionalAction, default=d.autocontrast,
                   help="stretch each colour channel of every image to its full range (1%% cut-off) before the resize, "
                        "in training, evaluation and serving (stored in animalclf.json; default: off)")
    g.add_argument("--augment", default=d.augment, choices=AUGMENTS,
                   help="training augmentation: standard = random crop, flip, mild colour jitter; invariant = also random "
                        "quarter turns and brightness x0.3-1.7 (before --autocontrast), what a rotation-pooled, "
                        "autocontrasted teacher is invariant to (default: standard)")
    g = parser.add_argument_group("Distillation")
    g.add_argument("--teacher", nargs="?", const=TEACHER_CHAMPION, default=d.teacher, metavar="REF",
                   help="learn from a teacher: any model the Predictor loads (checkpoint dir, models:/NAME/N, "
                        "models:/NAME@ALIAS); --teacher alone = the current @champion of --model-name. The alias is "
                        "pinned to its version at start and a resumed run keeps it (default: off)")
    g.add_argument("--kd-weight", type=float, default=d.kd_weight,
                   help=f"share of the teacher's term in the loss: 0 labels only, 1 teacher only (default: {d.kd_weight})")
    g.add_argument("--kd-temperature", type=float, default=d.kd_temperature,
                   help=f"temperature that softens student and teacher alike in that term (default: {d.kd_temperature})")
    g = parser.add_argument_group("Model")
    g.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)} (default: {d.arch})")
    g.add_argument("--weights", default=d.weights, help="imagenet, none, or a state-dict file (default: imagenet)")
    g.add_argument("--unfreeze", type=int, default=d.unfreeze, help=f"trainable trailing layers (default: {d.unfreeze})")
    g.add_argument("--dropout", type=float, default=d.dropout, help=f"(default: {d.dropout})")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=d.freeze_bn,
                   help="keep every BatchNorm layer in eval mode while training (its pretrained statistics; "
                        "its scale and shift still train when unfrozen; default: off)")
    g.add_argument("--rotation-pool", action=argparse.BooleanOptionalAction, default=d.rotation_pool,
                   help="make the model invariant to quarter turns: the head sees the mean of the pooled features "
                        "of the image turned 0/90/180/270 degrees (4x the compute per image; stored in "
                        "animalclf.json; default: off)")
    g.add_argument("--head-init", default=d.head_init, choices=HEAD_INITS,
                   help="random, or probe: fit the new head on the frozen pretrained features of the training "
                        f"images before the first epoch, then fine-tune (LP-FT; default: {d.head_init})")
    g = parser.add_argument_group("Optimisation")
    g.add_argument("--lr", type=float, default=d.lr,
                   help=f"Adam learning rate; 0 with --head-init probe --unfreeze 0 --epochs 1: the probe alone (default: {d.lr})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: 0)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default: 0)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help="keep an exponential moving average of the weights (updated every step) and evaluate, "
                        "checkpoint and serve it; 0 = off (default: 0)")
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="learning rate over epochs: constant, or cosine decay to 0 after --warmup-epochs (default: constant)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="cosine: epochs of linear warm-up (default: 0)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch (default: {d.batch_size})")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"(default: {d.epochs})")
    g.add_argument("--patience", type=int, default=d.patience, help="early-stop after N epochs without improvement, 0 = off (default: 3)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap batches per epoch (default: all)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="use NCHW memory format")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on GPU")
    g = parser.add_argument_group("Scale")
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="Ray Train workers (default: 1)")
    g.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    g.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker, help="(default: 1)")
    g.add_argument("--worker-resources", type=resources_arg, default={}, metavar="JSON",
                   help='custom Ray resources per worker, e.g. \'{"a10g": 1}\' (default: none)')
    g.add_argument("--max-failures", type=int, default=d.max_failures, help="worker-group restarts (default: 0)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="best k kept (default: 2)")
    g.add_argument("--metric", default=d.metric, help=f"checkpoint/early-stop metric (default: {d.metric})")
    g = parser.add_argument_group("Outputs and tracking")
    g.add_argument("--name", default=d.name, help="run name; same name + storage resumes (default: animalclf)")
    g.add_argument("--storage-path", default=None, help="Ray storage (local dir or s3://; default: ./runs/ray)")
    g.add_argument("--experiment", default=d.experiment, help="MLflow experiment (default: animalclf)")
    g.add_argument("--model-name", default=d.model_name, help="MLflow registered model name (default: animalclf)")
    g.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow")
    g.add_argument("--min-improvement", type=float, default=d.min_improvement,
                   help="accuracy gain (fraction) a new version needs, beyond noise, to become @champion "
                        f"(default: {d.min_improvement})")
    g.add_argument("--non-inferiority-margin", dest="ni_margin", type=float, default=d.ni_margin,
                   help="or promote a candidate no worse than the champion by more than this accuracy margin (paired "
                        "non-inferiority test on the same images) that is --cheaper-by times cheaper per photo; "
                        f"0 = off (default: {d.ni_margin})")
    g.add_argument("--cheaper-by", type=float, default=d.cheaper_by,
                   help="how many times cheaper per photo (Predictor, one thread, preprocessing included, both "
                        f"measured side by side) the non-inferiority rule asks for (default: {d.cheaper_by:g})")
    g.add_argument("--max-ms-per-photo", type=float, default=None, metavar="MS",
                   help="a candidate that takes longer per photo (measured as above) never becomes champion (default: no budget)")
    g.add_argument("--force-promote", action="store_true",
                   help="make the new version @champion without the gate (also when the champion cannot be read)")
    return parser


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed args (unknown attributes are ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return TrainConfig(**values)


def smoke(cfg: TrainConfig) -> TrainConfig:
    """Shrink a config so the whole path finishes in seconds (``--smoke-test``)."""
    return cfg.replace(
        epochs=min(cfg.epochs, 2), image_size=64, max_steps_per_epoch=2, batch_size=min(cfg.batch_size, 8),
        unfreeze=min(cfg.unfreeze, 1), patience=0, warmup_epochs=min(cfg.warmup_epochs, 1),
    )


__all__ = ["TrainConfig", "add_train_args", "config_from_args", "smoke", "project_dir", "runs_dir", "check_runs_dir", "ARCHS",
           "METRICS", "FINAL_MODES", "HEAD_INITS", "GROUP_MODES", "AUGMENTS", "TEACHER_CHAMPION", "SCHEDULES", "better", "check_unfreeze", "resources_arg"]
