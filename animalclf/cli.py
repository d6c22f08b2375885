"""Shared behaviour of entry scripts: logging, and user errors as one line with exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from animalclf.errors import UserError
from animalclf.logs import setup_logging
from animalclf.tracking import redact

log = logging.getLogger(__name__)


def run_main(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run ``main``; a :class:`UserError` prints ``error: ...`` and returns 2."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        return main(args) or 0
    except UserError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # Ray wraps worker errors: surface a UserError raised on a worker
        cause = _user_error_in(e)
        if cause is not None:
            print(f"error: {redact(str(cause))}", file=sys.stderr)
            return 2
        raise


def _user_error_in(e: BaseException) -> Optional[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
    return None
