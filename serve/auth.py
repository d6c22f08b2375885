"""The endpoint's API key: where it comes from, how a request shows it, and how a client sends it.

One key per endpoint, from (first found) the ``api_key_file`` setting, ``$ANIMALCLF_API_KEY_FILE``,
or ``$ANIMALCLF_API_KEY``. The launcher (:mod:`serve.deploy`) never puts the key itself into Serve's
config, which every holder of the Ray token can read: a key given as ``$ANIMALCLF_API_KEY`` is
written to a file only you can read (``runs/.secrets/serve-api-key``, mode 600) and replicas get its
path. Clients send ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``); the replica compares in
constant time. No key set: the endpoint is open, which is fine on loopback and warned about loudly
anywhere else.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["KEY_VAR", "KEY_FILE_VAR", "read_key", "key_file_for_replicas", "authorized", "client_headers"]

KEY_VAR, KEY_FILE_VAR = "ANIMALCLF_API_KEY", "ANIMALCLF_API_KEY_FILE"


def read_key(api_key_file: Optional[str] = None, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The key this endpoint requires, or ``None`` (no key: open). A key file that cannot be read is
    an error, never an open endpoint."""
    path = api_key_file or environ.get(KEY_FILE_VAR)
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as e:
            raise OSError(f"the API key file {path} cannot be read ({type(e).__name__}): fix the path or its "
                          f"permissions") from None
        if not key:
            raise OSError(f"the API key file {path} is empty: write the key into it")
        return key
    return environ.get(KEY_VAR, "").strip() or None


def key_file_for_replicas(runs: Path, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The key file replicas should read: ``$ANIMALCLF_API_KEY_FILE``, or ``$ANIMALCLF_API_KEY``
    written to ``runs/.secrets/serve-api-key`` (mode 600, replaced whole); ``None`` without a key."""
    if environ.get(KEY_FILE_VAR):
        return str(Path(environ[KEY_FILE_VAR]).resolve())
    key = environ.get(KEY_VAR, "").strip()
    if not key:
        return None
    folder = runs / ".secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    path, tmp = folder / "serve-api-key", folder / f".serve-api-key.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.replace(tmp, path)
    return str(path)


def authorized(headers: Mapping[str, str], key: Optional[str]) -> bool:
    """Whether a request with ``headers`` shows ``key`` (always, when there is no key)."""
    if key is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())


def client_headers(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What a client of the endpoint sends (the UI, :func:`serve.deploy.refresh`): the key from the
    same variables, if any."""
    try:
        key = read_key(None, environ)
    except OSError:
        return {}
    return {"Authorization": f"Bearer {key}"} if key else {}
