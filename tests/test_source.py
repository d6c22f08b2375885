"""Choosing the data source once (animalclf.data.source): ``open_source`` picks a local folder or a
bucket from the names alone, and mixed or missing roots are one-line user errors."""

import pytest

from animalclf.config import TrainConfig
from animalclf.data.bucket import Bucket
from animalclf.data.folder import LocalFolder
from animalclf.data.source import DataSource, open_source, source_of
from animalclf.errors import UserError


def test_open_source_picks_the_kind_once(tmp_path):
    assert open_source("photos") == LocalFolder("photos")
    assert open_source("s3://b/p") == Bucket("s3://b/p")
    assert open_source(None, "s3://b/t", "s3://b/v") == Bucket(None, "s3://b/t", "s3://b/v")
    assert open_source(None, "t", "v") == LocalFolder(None, "t", "v")
    assert all(isinstance(s, DataSource) for s in (LocalFolder("x"), Bucket("s3://b/x")))
    with pytest.raises(UserError, match="both be local folders or both s3"):
        open_source(None, "s3://b/t", str(tmp_path))
    with pytest.raises(UserError, match="both be local folders or both s3"):
        open_source(None, str(tmp_path), "s3://b/v")
    with pytest.raises(UserError, match="No data given"):
        open_source(None, "t", None)
    assert LocalFolder("x").trainer_inputs(None, None, 0, 2) == {}  # workers read the files themselves


def test_a_configs_source_is_read_from_its_roots_and_errors_are_one_line():
    assert source_of(TrainConfig(data="s3://b/p")) == Bucket("s3://b/p")
    assert source_of(TrainConfig(data="photos", train_dir="t", val_dir="v")) == LocalFolder("photos")  # --data wins
    assert source_of(TrainConfig(train_dir="t", val_dir="v")) == LocalFolder(None, "t", "v")
    for cfg in (TrainConfig(), TrainConfig(train_dir="t"), TrainConfig(train_dir="s3://b/t", val_dir="v")):
        with pytest.raises(UserError, match="--data DIR|both be local folders") as e:
            source_of(cfg)
        assert "\n" not in str(e.value)
