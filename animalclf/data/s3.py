"""Object storage access from the standard AWS variables: what an ``s3://`` URI is, the
filesystem that reads it, and reading one object.

Credentials and endpoint come from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (MinIO, moto, ...). Without keys in the environment,
each node uses the AWS SDK's own chain (instance role, ``~/.aws``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional
from urllib.parse import urlparse

__all__ = ["SCHEME", "is_remote", "strip", "options_from_env", "client_env", "s3_filesystem", "read_bytes"]

SCHEME = "s3://"


def is_remote(uri: Optional[str]) -> bool:
    """``True`` for an ``s3://`` URI."""
    return bool(uri) and str(uri).startswith(SCHEME)


def strip(uri: str) -> str:
    """``s3://bucket/prefix/`` → ``bucket/prefix`` (the form pyarrow and Ray Data paths use)."""
    return str(uri)[len(SCHEME):].strip("/")


def options_from_env() -> tuple[tuple[str, Any], ...]:
    """``pyarrow.fs.S3FileSystem`` keyword arguments from the standard AWS variables."""
    env = os.environ
    kw: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kw["scheme"] = u.scheme
        region = region or "us-east-1"  # S3-compatible servers ignore it; avoids a region lookup
    if region:
        kw["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        # explicit keys travel with the filesystem into the Ray Data read tasks, so nodes whose
        # environment lacks them (a cluster started before this shell) can still read
        kw["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kw["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kw["session_token"] = env["AWS_SESSION_TOKEN"]
    return tuple(sorted(kw.items()))


def client_env() -> dict[str, str]:
    """This process's ``AWS_*`` variables, read now: what another process needs to read the same buckets."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


@functools.lru_cache(maxsize=4)
def _filesystem(options: tuple[tuple[str, Any], ...]):
    from pyarrow import fs

    return fs.S3FileSystem(**dict(options))


def s3_filesystem():
    """A ``pyarrow.fs.S3FileSystem`` configured from the environment (cached per configuration)."""
    return _filesystem(options_from_env())


def read_bytes(uri: str) -> bytes:
    """The whole object at ``uri``."""
    with s3_filesystem().open_input_stream(strip(uri)) as f:
        return f.read()
