"""The Ray Train worker's inputs (animalclf.train.worker): the sample list reaches workers through
Ray's object store, not inside train_loop_config (which every worker and the controller copy)."""

from dataclasses import asdict

import pytest

from animalclf.config import TrainConfig
from animalclf.data.split import Split
from animalclf.train.worker import _fetch, make_trainer


@pytest.mark.ray
def test_sample_list_travels_by_reference(ray_session, tiny_folder, tmp_path):
    import pickle

    import ray

    samples = [(f"{tiny_folder}/Red/red_{i}.jpg", 0) for i in range(5000)]
    split = Split(["Red", "Blue"], samples[:4000], samples[4000:], {samples[0][0]: "g", samples[1][0]: "g"})
    cfg = TrainConfig(data=str(tiny_folder), arch="efficientnet_lite0", weights="none", unfreeze=0,
                      storage_path=str(tmp_path / "ray"))
    trainer = make_trainer(cfg, split, None)
    ref = trainer.train_loop_config["split"]
    assert isinstance(ref, ray.ObjectRef)
    assert len(pickle.dumps(trainer.train_loop_config)) < 20_000  # vs ~400 KB for 5000 names inline
    assert Split(**_fetch(ref)) == split and _fetch(asdict(split)) == asdict(split)
