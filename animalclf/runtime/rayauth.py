"""Ray token authentication: a token exists, only its owner can read it, and auth is on.

Ray 2.60 on a fresh machine: ``ray.init()`` creates ``~/.ray/auth_token`` but ``ray start --head``
does not (without ``RAY_AUTH_MODE`` it starts with auth *disabled*; with ``RAY_AUTH_MODE=token`` it
refuses to start). Every head we start and every client we run goes through :func:`enable_token_auth`,
which creates the token the way Ray documents (``ray get-auth-token --generate``), never prints it,
and makes any token file it finds mode 600 (Ray writes it with the user's umask: 644 under the usual
022, readable by every local user).

Auth can be turned off only by naming it: ``RAY_AUTH_MODE=disabled``, with a warning that says what
is exposed. Any other value but ``token`` is refused.

    python -m animalclf.runtime.rayauth      # what `make head-start` runs first
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["AUTH_VARS", "DISABLED", "token_location", "ensure_token", "enable_token_auth", "make_private"]

# What Ray reads to find the token, in its own order; also what a test scrubs for a clean client.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
DISABLED = "disabled"  # the one RAY_AUTH_MODE value, besides "token", that we accept


def _default_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def make_private(path: Path) -> bool:
    """Make the token file ``path`` readable and writable by its owner only (mode 600); returns
    whether its mode had to change (then says so once)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return False
    path.chmod(0o600)
    log.warning("The Ray auth token %s was readable by others (mode %o): made it mode 600. If other users could "
                "read it, rotate it: remove it and restart the heads (docs/security.md).",
                path, mode)
    return True


def token_location(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """Where Ray will find the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``),
    or ``None`` when there is none yet. A token file found is made mode 600 (:func:`make_private`)."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).is_file():
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is not a file: point it at the cluster's token, or unset it "
                            f"to use ~/.ray/auth_token.")
        make_private(Path(path))
        return path
    if _default_path().is_file():
        make_private(_default_path())
        return str(_default_path())
    return None


def ensure_token(environ: Mapping[str, str] = os.environ) -> str:
    """Return where the token is; create ``~/.ray/auth_token`` (mode 600) when there is none."""
    found = token_location(environ)
    if found:
        return found
    ray_cli = Path(sys.executable).parent / "ray"
    path = _default_path()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    old = os.umask(0o077)  # created private, not made private after a moment readable by all
    try:
        r = subprocess.run([str(ray_cli) if ray_cli.exists() else "ray", "get-auth-token", "--generate"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.umask(old)
    if r.returncode != 0 or not path.is_file():
        raise UserError(f"Could not create a Ray auth token at {path} ({r.stderr.strip()[-200:]}): "
                        f"run `ray get-auth-token --generate` yourself or set RAY_AUTH_TOKEN.")
    path.chmod(0o600)
    log.warning("Created a Ray auth token at %s (readable only by you; not printed). Every Ray head started here "
                "requires it: drivers, `ray job submit` and the dashboard's API are refused without it. Copy it to "
                "the machines that submit jobs; never commit it.", path)
    return str(path)


def auth_mode(environ: Mapping[str, str] = os.environ) -> str:
    """``"token"`` (unset or ``token``) or ``"disabled"`` (only when named); anything else is a :class:`UserError`."""
    mode = environ.get("RAY_AUTH_MODE", "token").strip().lower() or "token"
    if mode not in ("token", DISABLED):
        raise UserError(f"RAY_AUTH_MODE={environ['RAY_AUTH_MODE']!r} is not a mode animalclf runs Ray with: unset it "
                        f"(token auth), or set RAY_AUTH_MODE={DISABLED} to run without auth on purpose.")
    return mode


def enable_token_auth() -> str:
    """Token auth on for this process and what it starts (``RAY_AUTH_MODE=token`` unless set), with a
    private token in place; returns where the token is, or ``"disabled"`` when the user named
    ``RAY_AUTH_MODE=disabled`` (with a warning). Call before starting or joining Ray."""
    if auth_mode() == DISABLED:
        os.environ["RAY_AUTH_MODE"] = DISABLED
        log.warning("RAY_AUTH_MODE=disabled: Ray runs WITHOUT authentication. Anyone who can reach this machine's Ray "
                    "ports (GCS, dashboard and Jobs API, runtime-env agent, workers) can submit jobs and run code as "
                    "you, and read your runs' environment. Unset RAY_AUTH_MODE to turn token auth back on.")
        return DISABLED
    os.environ["RAY_AUTH_MODE"] = "token"
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
        where = enable_token_auth()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Ray auth token: {where}" if where != DISABLED else "Ray auth: disabled (RAY_AUTH_MODE=disabled)")
