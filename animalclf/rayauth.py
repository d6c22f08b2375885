"""Ray token authentication: make sure a token exists before anything starts or joins a head.

Ray 2.60 on a fresh machine: ``ray.init()`` creates ``~/.ray/auth_token`` but ``ray start --head``
does not (without ``RAY_AUTH_MODE`` it starts with auth *disabled*; with ``RAY_AUTH_MODE=token`` it
refuses to start). Every head we start and every client we run goes through :func:`ensure_token`,
which creates the token the way Ray documents (``ray get-auth-token --generate``) and never prints it.

    python -m animalclf.rayauth      # what `make head-start` runs first
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["AUTH_VARS", "token_location", "ensure_token", "enable_token_auth"]

# What Ray reads to find the token, in its own order; also what a test scrubs for a clean client.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _default_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_location(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """Where Ray will find the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``),
    or ``None`` when there is none yet."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).is_file():
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is not a file: point it at the cluster's token, or unset it "
                            f"to use ~/.ray/auth_token.")
        return path
    return str(_default_path()) if _default_path().is_file() else None


def ensure_token(environ: Mapping[str, str] = os.environ) -> str:
    """Return where the token is; create ``~/.ray/auth_token`` (mode 600) when there is none."""
    found = token_location(environ)
    if found:
        return found
    ray_cli = Path(sys.executable).parent / "ray"
    r = subprocess.run([str(ray_cli) if ray_cli.exists() else "ray", "get-auth-token", "--generate"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    path = _default_path()
    if r.returncode != 0 or not path.is_file():
        raise UserError(f"Could not create a Ray auth token at {path} ({r.stderr.strip()[-200:]}): "
                        f"run `ray get-auth-token --generate` yourself or set RAY_AUTH_TOKEN.")
    path.chmod(0o600)
    log.warning("Created a Ray auth token at %s (readable only by you; not printed). Every Ray head started here "
                "requires it: drivers, `ray job submit` and the dashboard's API are refused without it. Copy it to "
                "the machines that submit jobs; never commit it.", path)
    return str(path)


def enable_token_auth() -> str:
    """Token auth on for this process and what it starts (``RAY_AUTH_MODE=token`` unless set), with a
    token in place; returns where the token is (or ``"disabled"``). Call before starting or joining Ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"].lower() != "token":
        return "disabled"
    where = ensure_token()
    if "ray" in sys.modules:
        # Ray reads RAY_AUTH_MODE once, when it is imported, and no public API reads it again; this
        # is the call Ray's own ray.init() makes when it turns token auth on for a new local cluster.
        from ray._raylet import Config

        Config.initialize("")
    return where


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        where = ensure_token()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Ray auth token: {where}")
