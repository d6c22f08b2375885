import argparse

import pytest

from animalclf.config import TrainConfig, add_train_args, config_from_args, smoke
from animalclf.errors import UserError


def parse(*argv):
    return config_from_args(add_train_args(argparse.ArgumentParser()).parse_args(list(argv)))


def test_defaults_follow_the_original():
    cfg = parse("--data", "d")
    assert (cfg.arch, cfg.lr, cfg.batch_size, cfg.epochs, cfg.val_ratio) == ("efficientnet_b0", 1e-3, 64, 10, 0.2)
    assert TrainConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    assert smoke(cfg).epochs == 2 and smoke(cfg).image_size == 64


@pytest.mark.parametrize("argv,match", [
    (["--data", "d", "--arch", "vgg"], "Unknown arch 'vgg'"),
    (["--data", "d", "--unfreeze", "19"], "out of range"),
    (["--data", "d", "--unfreeze", "-1"], "out of range"),
    (["--data", "d", "--arch", "efficientnet_lite2", "--unfreeze", "24"], "out of range for efficientnet_lite2.*0:23"),
    ([], "No data given"),
    (["--data", "d", "--train-dir", "t"], "either --data"),
    (["--data", "d", "--val-ratio", "1.5"], "val-ratio"),
    (["--data", "d", "--lr", "-1"], "--lr must be positive"),
    (["--data", "d", "--lr", "0"], "--lr 0 keeps the linear probe.*--head-init probe --unfreeze 0 --epochs 1"),
    (["--data", "d", "--lr", "0", "--head-init", "probe", "--unfreeze", "0", "--epochs", "2"], "--epochs 1"),
    (["--data", "d", "--ema-decay", "1"], "--ema-decay 1.0 must be at least 0"),
    (["--data", "d", "--metric", "auc"], "Unknown metric"),
    (["--data", "d", "--epochs", "3", "--warmup-epochs", "3"], "--warmup-epochs 3 must be"),
    (["--data", "d", "--warmup-epochs", "-1"], "--warmup-epochs -1 must be"),
    (["--data", "d", "--warmup-epochs", "1"], "only applies to --schedule cosine"),
    (["--data", "d", "--final", "ensemble"], "add --cv K"),
])
def test_validation_errors(argv, match):
    with pytest.raises(UserError, match=match):
        parse(*argv).validate()


def test_the_linear_probe_alone_is_a_valid_recipe():
    cfg = parse("--data", "d", "--lr", "0", "--head-init", "probe", "--unfreeze", "0", "--epochs", "1").validate()
    assert (cfg.lr, cfg.head_init, cfg.freeze_bn, cfg.ema_decay) == (0, "probe", False, 0.0)


def test_lite2_autocontrast_and_rotation_pool_flags():
    cfg = parse("--data", "d", "--arch", "efficientnet_lite2", "--unfreeze", "23", "--autocontrast", "--rotation-pool").validate()
    assert (cfg.arch, cfg.unfreeze, cfg.autocontrast, cfg.rotation_pool) == ("efficientnet_lite2", 23, True, True)
    assert not parse("--data", "d").autocontrast and not parse("--data", "d").rotation_pool  # off by default


def test_a_schedule_shorter_than_the_run_is_refused():
    with pytest.raises(UserError, match="schedule_epochs 2 is shorter than --epochs 4"):
        TrainConfig(data="d", epochs=4, schedule_epochs=2).validate()
    TrainConfig(data="d", epochs=4, schedule_epochs=6, schedule="cosine").validate()  # a refit: a longer schedule, stopped early


def test_distillation_and_cost_flags():
    p = add_train_args(argparse.ArgumentParser())
    cfg = config_from_args(p.parse_args(["--data", "d", "--teacher", "--kd-weight", "0.7", "--augment", "invariant"]))
    assert cfg.teacher == "champion" and cfg.kd_weight == 0.7 and cfg.augment == "invariant"
    assert config_from_args(p.parse_args(["--data", "d", "--teacher", "models:/m/3"])).teacher == "models:/m/3"
    assert config_from_args(p.parse_args(["--data", "d"])).teacher is None
    cfg = config_from_args(p.parse_args(["--data", "d", "--non-inferiority-margin", "0.02", "--cheaper-by", "4",
                                         "--max-ms-per-photo", "50"])).validate()
    assert (cfg.ni_margin, cfg.cheaper_by, cfg.max_ms_per_photo) == (0.02, 4.0, 50.0)
    for bad, match in ((dict(ni_margin=1.0), "--non-inferiority-margin"), (dict(cheaper_by=0.5), "--cheaper-by"),
                       (dict(max_ms_per_photo=0), "--max-ms-per-photo")):
        with pytest.raises(UserError, match=match):
            TrainConfig(data="d", **bad).validate()
