"""What every entry script shares (animalclf.runtime.cli): ``run_main`` turns a user error, also one
wrapped by Ray, into one ``error: ...`` line (secrets redacted) and exit code 2, and ``--config``
YAML files become flag defaults, with unknown keys refused before the run starts."""

import argparse
import re
import signal

import pytest

from animalclf.errors import UserError
from animalclf.runtime.cli import add_config_arg, run_main


@pytest.fixture(autouse=True)
def _process_state_restored(monkeypatch):
    """run_main installs a SIGTERM handler and sets a Tune variable for the process: undo both."""
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    monkeypatch.delenv("ANIMALCLF_SECRETS_FILE", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_arg(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--name", default="run")
    return p


def test_user_errors_are_one_line_and_exit_2_and_secrets_are_redacted(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")

    def fails(args):
        raise UserError(f"Cannot log in to the server with password hunter2-secret as {args.name}")

    assert run_main(fails, parser(), ["--name", "alice"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Cannot log in to the server with password *** as alice"]

    def wrapped(args):  # how Ray surfaces an error raised on a worker
        try:
            raise UserError("Data folder 'x' does not exist")
        except UserError as e:
            raise RuntimeError("RayTaskError(UserError): ...") from e

    assert run_main(wrapped, parser(), []) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: Data folder 'x' does not exist"]


def test_a_bug_keeps_its_traceback_and_main_picks_the_exit_code():
    def bug(args):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(bug, parser(), [])
    assert run_main(lambda args: None, parser(), []) == 0
    assert run_main(lambda args: 5, parser(), []) == 5


def test_config_yaml_gives_defaults_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 16\nname: from-file\nspace:\n  lr: 1e-4:1e-2\n")  # `space:` is tune.py's own section
    seen = []
    assert run_main(lambda args: seen.append((args.batch_size, args.name)), parser(), ["--config", str(cfg)]) == 0
    assert run_main(lambda args: seen.append((args.batch_size, args.name)), parser(),
                    ["-c", str(cfg), "--name", "cli"]) == 0
    assert seen == [(16, "from-file"), (16, "cli")]


@pytest.mark.parametrize("text,word", [
    ("batch_size: 16\nbatch-size: 8\nlearning_rate: 1\n", "Unknown keys in .*\\['batch-size', 'learning_rate'\\]; use flag names"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("a: [1\n", "not valid YAML"),
    (None, "does not exist"),
])
def test_a_bad_config_file_is_one_line_before_main_runs(tmp_path, capsys, text, word):
    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_text(text)
    called = []
    assert run_main(lambda args: called.append(args), parser(), ["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(word, err[0]), err
    assert not called
