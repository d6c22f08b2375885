import json

import numpy as np
import pytest
import torch

from animalclf.models.checkpoint import load_model, load_train_state, ray_checkpoints, read_meta, save_checkpoint
from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.models.build import build_model
from animalclf.train.worker import checkpoint_meta


def test_checkpoint_round_trip_without_ray(tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=2, image_size=64)
    model = build_model(cfg.arch, 3, cfg.unfreeze, "none").eval()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    meta = checkpoint_meta(cfg, ["x", "y", "z"], {"val_accuracy": 0.5, "note": "dropped"}, epoch=3)
    history = [{"val_accuracy": np.float64(0.5), "loss": np.float32(1.5), "epoch": 1}]
    save_checkpoint(tmp_path / "ck", model, meta, {"epoch": 3, "optimizer": opt.state_dict(), "history": history})
    loaded, m = load_model(tmp_path / "ck")
    assert m["classes"] == ["x", "y", "z"] and m["epoch"] == 3 and m["metrics"] == {"val_accuracy": 0.5}
    assert m["preprocess"]["crop_size"] == 64 and m["config"]["unfreeze"] == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    state = load_train_state(tmp_path / "ck")  # weights_only=True, NumPy scalars in the history too
    assert state["epoch"] == 3 and state["history"] == history
    assert state["optimizer"]["param_groups"][0]["lr"] == opt.state_dict()["param_groups"][0]["lr"]
    assert not list((tmp_path / "ck").glob(".*"))  # no temp files left behind
    with pytest.raises(UserError, match="not an animalclf checkpoint"):
        read_meta(tmp_path)


def test_rotation_pool_and_autocontrast_travel_in_the_checkpoint(tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64, rotation_pool=True,
                      autocontrast=True)
    model = build_model(cfg.arch, 3, 0, "none", rotation_pool=True).eval()
    save_checkpoint(tmp_path / "ck", model, checkpoint_meta(cfg, ["x", "y", "z"], {}, epoch=1), {"epoch": 1})
    loaded, meta = load_model(tmp_path / "ck")
    assert meta["rotation_pool"] and meta["preprocess"]["autocontrast"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the loaded model pools too: invariant, and equal to the saved one
        torch.testing.assert_close(loaded(torch.rot90(x, 1, (2, 3))), model(x), atol=1e-5, rtol=1e-5)


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_train_state_with_code_is_refused(tmp_path):
    model = build_model("efficientnet_lite0", 3, 0, "none")
    meta = checkpoint_meta(TrainConfig(arch="efficientnet_lite0", weights="none", image_size=64), ["x", "y", "z"], {}, 1)
    save_checkpoint(tmp_path / "ck", model, meta, {"epoch": 1, "evil": _Payload(str(tmp_path / "pwned"))})
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_train_state(tmp_path / "ck")
    assert not (tmp_path / "pwned").exists()


def test_ray_checkpoints_are_the_dated_checkpoint_dirs_oldest_first(tmp_path):
    meta = {"arch": "efficientnet_lite0", "classes": ["a"], "unfreeze": 0}
    for name in ("checkpoint_2026-11-29_10-00-02.1", "checkpoint_2026-11-29_10-00-01.5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "animalclf.json").write_text(json.dumps(meta))
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray Train V2's own file
    (tmp_path / "checkpoint_tmp_half_written").mkdir()  # no meta: not (yet) a checkpoint
    assert [p.name for p in ray_checkpoints(tmp_path)] == ["checkpoint_2026-11-29_10-00-01.5",
                                                           "checkpoint_2026-11-29_10-00-02.1"]
    assert ray_checkpoints(tmp_path / "missing") == []
