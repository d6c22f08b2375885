"""Shared behaviour of entry scripts: logging, one ``--config`` YAML mechanism, user errors as one
line with exit code 2, and Ctrl-C / SIGTERM that stop everything the run started."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Callable, Optional, Sequence

from animalclf.errors import UserError
from animalclf.runtime import localray
from animalclf.runtime.logs import setup_logging
from animalclf.tracking import forget_secrets, redact

log = logging.getLogger(__name__)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# Keys of a --config file that are not flags: read by the entry point itself (tune.py's `space:`).
CONFIG_SECTIONS = ("space",)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML of flag defaults (flag names with underscores); the command line wins")


def apply_config_file(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> None:
    """``--config FILE``: its keys become the parser's defaults (unknown keys are a user error)."""
    import yaml

    pre, _ = parser.parse_known_args(argv)
    path = getattr(pre, "config", None)
    if not path:
        return
    if not os.path.isfile(path):
        raise UserError(f"--config {path!r} does not exist.")
    try:
        data = yaml.safe_load(open(path)) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must be a mapping of flag names to values.")
    dests = {a.dest for a in parser._actions} | set(CONFIG_SECTIONS)
    unknown = sorted(set(data) - dests)
    if unknown:
        raise UserError(f"Unknown keys in {path}: {unknown}; use flag names with underscores (e.g. batch_size).")
    parser.set_defaults(**{k: v for k, v in data.items() if k not in CONFIG_SECTIONS})


def run_main(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run ``main``; a :class:`UserError` prints ``error: ...`` and returns 2.

    Ctrl-C, ``kill -INT`` and SIGTERM all end the run the same way: the private Ray head this
    process started (if any) is stopped with every process of it, and the exit code is 130.
    However it ends, the secrets file a submitted job was given is removed.
    """
    setup_logging()
    try:
        apply_config_file(parser, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_args(argv)
    # Tune's own SIGINT handler swallows a lone SIGINT ("ending Ray Tune run") and keeps going.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(args) or 0
    except UserError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        lost = localray.lost_head()
        print(f"error: {lost}" if lost else "interrupted: stopping", file=sys.stderr, flush=True)
        return 3 if lost else 130
    except Exception as e:  # Ray wraps worker errors: surface a UserError raised on a worker
        cause = _user_error_in(e)
        if cause is not None:
            print(f"error: {redact(str(cause))}", file=sys.stderr)
            return 2
        lost = localray.lost_head()
        if lost:
            print(f"error: {lost}", file=sys.stderr)
            return 3
        raise
    finally:
        localray.stop_owned()
        forget_secrets()  # a job's secrets file (make submit-*): its driver is done with it


def _user_error_in(e: BaseException) -> Optional[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
    return None
