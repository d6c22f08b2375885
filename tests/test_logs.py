"""Logging set-up and durations for people (animalclf.runtime.logs)."""

import logging
import sys

import pytest

from animalclf.runtime.logs import fmt_seconds, setup_logging


@pytest.mark.parametrize("seconds,text", [(0, "0m00s"), (0.4, "0m00s"), (59.6, "1m00s"), (61, "1m01s"), (3599, "59m59s"),
                                          (3600, "1h00m"), (3661, "1h01m"), (90061, "25h01m")])
def test_fmt_seconds(seconds, text):
    assert fmt_seconds(seconds) == text


@pytest.fixture
def bare_logger():
    """The ``animalclf`` logger without handlers for the test, restored afterwards."""
    logger = logging.getLogger("animalclf")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []
    yield logger
    logger.handlers, logger.level, logger.propagate = saved


def test_setup_logging_adds_one_stderr_handler_once(bare_logger, monkeypatch, capsys):
    monkeypatch.setenv("ANIMALCLF_LOG_LEVEL", "WARNING")
    setup_logging()
    setup_logging("DEBUG")  # a second call (another entry point, a worker) changes nothing
    ours = [h for h in bare_logger.handlers if getattr(h, "animalclf_stderr", False)]  # pytest may add its own
    assert len(ours) == 1 and isinstance(ours[0], logging.StreamHandler)
    assert ours[0].stream is sys.stderr  # the stream of the moment (here: capsys's), not the one at creation
    assert bare_logger.level == logging.WARNING and not bare_logger.propagate
    logging.getLogger("animalclf.data").info("hidden")
    logging.getLogger("animalclf.data").warning("shown once")
    err = capsys.readouterr().err
    assert "hidden" not in err and err.count("shown once") == 1 and "WARNING animalclf.data: shown once" in err


def test_an_explicit_level_wins_over_the_variable(bare_logger, monkeypatch):
    monkeypatch.setenv("ANIMALCLF_LOG_LEVEL", "ERROR")
    setup_logging("DEBUG")
    assert bare_logger.level == logging.DEBUG
