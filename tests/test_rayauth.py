"""animalclf.runtime.rayauth: the token is its owner's alone, and Ray runs without auth only when asked by name.
Real files under a fresh HOME, the real `python -m animalclf.runtime.rayauth` that `make head-start` runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from animalclf.errors import UserError
from animalclf.runtime.rayauth import AUTH_VARS, auth_mode, token_location

ROOT = Path(__file__).resolve().parents[1]


def rayauth(home: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    return subprocess.run([sys.executable, "-m", "animalclf.runtime.rayauth"], env={**base, "HOME": str(home), **env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_token_readable_by_others_is_made_private_once(tmp_path):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("a" * 64)
    token.chmod(0o644)  # what `ray get-auth-token --generate` or ray.init() leave under umask 022
    r = rayauth(tmp_path)
    assert r.returncode == 0, r.stderr
    assert mode(token) == 0o600
    assert r.stderr.count("readable by others") == 1 and "rotate" in r.stderr and "a" * 64 not in r.stdout + r.stderr
    again = rayauth(tmp_path)
    assert again.returncode == 0 and "readable by others" not in again.stderr  # said once, when it had to


def test_a_token_path_given_is_made_private_too(tmp_path):
    token = tmp_path / "cluster-token"
    token.write_text("b" * 64)
    token.chmod(0o664)
    assert token_location({"RAY_AUTH_TOKEN_PATH": str(token)}) == str(token)
    assert mode(token) == 0o600


def test_a_created_token_is_private_from_the_start(tmp_path):
    r = rayauth(tmp_path)
    assert r.returncode == 0, r.stderr
    token = tmp_path / ".ray" / "auth_token"
    assert mode(token) == 0o600 and mode(token.parent) & 0o077 == 0
    assert token.read_text().strip() not in r.stdout + r.stderr


def test_auth_is_off_only_when_named():
    assert auth_mode({}) == "token" and auth_mode({"RAY_AUTH_MODE": "TOKEN"}) == "token"
    assert auth_mode({"RAY_AUTH_MODE": "disabled"}) == "disabled"
    for wrong in ("tokn", "none", "off", "0"):
        with pytest.raises(UserError, match="RAY_AUTH_MODE=disabled"):
            auth_mode({"RAY_AUTH_MODE": wrong})


def test_disabled_by_name_warns_what_is_exposed_and_a_typo_is_one_line(tmp_path):
    r = rayauth(tmp_path, RAY_AUTH_MODE="disabled")
    assert r.returncode == 0 and "WITHOUT authentication" in r.stderr and "run code as you" in r.stderr
    assert not (tmp_path / ".ray" / "auth_token").exists()
    r = rayauth(tmp_path, RAY_AUTH_MODE="tokn")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "'tokn'" in errors[0] and "Traceback" not in r.stderr
