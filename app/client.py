"""HTTP client of the classifier endpoint, kept out of the Streamlit script so it can be tested.

Every failure becomes :class:`EndpointError` with a message meant for the page: the endpoint is
down, timed out, overloaded, or rejected the image (and why).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import requests

from animalclf.config import IMAGE_EXTENSIONS, TrainConfig
from animalclf.evaluate.registry import champion_ref
from serve.auth import client_headers

log = logging.getLogger(__name__)

__all__ = ["EndpointError", "Client", "default_endpoint", "default_gallery", "gallery_images"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
_REPO = Path(__file__).resolve().parents[1]


class EndpointError(Exception):
    """The endpoint could not answer usefully; ``str(e)`` is shown to the user as is."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


def default_endpoint() -> str:
    return os.environ.get("ANIMALCLF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def default_gallery() -> Optional[str]:
    """``$ANIMALCLF_GALLERY``, else ``../shared/data/animals15`` next to the repo if it exists."""
    env = os.environ.get("ANIMALCLF_GALLERY")
    if env:
        return env
    d = _REPO.parent / "shared" / "data" / "animals15"
    return str(d) if d.is_dir() else None


def gallery_images(folder: str | Path, per_class: int = 3) -> list[Path]:
    """A few images per class folder (or the images directly in ``folder``), sorted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    out: list[Path] = []
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    for d in subdirs or [root]:
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        out.extend(imgs[:per_class])
    return out


class Client:
    """``Client(url).predict(bytes)`` → the endpoint's JSON, or :class:`EndpointError`.

    ``max_bytes``: the endpoint's per-image limit (its /metadata ``limits.max_bytes``); images
    over it are refused here without sending them.
    """

    def __init__(self, base_url: Optional[str] = None, timeout: float = 30.0, max_bytes: Optional[int] = None):
        self.base_url = (base_url or default_endpoint()).rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.headers = client_headers()  # the endpoint's API key, when ANIMALCLF_API_KEY(_FILE) is set

    def _request(self, method: str, route: str, **kw: Any) -> dict[str, Any]:
        url = f"{self.base_url}{route}"
        try:
            r = requests.request(method, url, timeout=self.timeout, headers=self.headers, **kw)
        except requests.ConnectionError:
            raise EndpointError(
                f"Cannot reach the classifier at {self.base_url}: is it running? Start it with "
                f"`python serve/deploy.py --model {champion_ref(TrainConfig.model_name)}` or set ANIMALCLF_ENDPOINT.") from None
        except requests.Timeout:
            raise EndpointError(f"The classifier at {self.base_url} did not answer within {self.timeout:.0f} s.") from None
        except requests.RequestException as e:
            raise EndpointError(f"Request to {url} failed: {type(e).__name__}: {e}") from None
        if r.status_code == 200:
            try:
                return r.json()
            except ValueError:
                raise EndpointError(f"{url} answered 200 but not JSON: is {self.base_url} the classifier?") from None
        try:
            detail = r.json().get("error") or r.text
        except (ValueError, AttributeError):
            detail = r.text.strip() or r.reason
        if r.status_code in (429, 503):
            wait = r.headers.get("retry-after")
            raise EndpointError(f"The classifier is overloaded (HTTP {r.status_code}); try again{f' in {wait} s' if wait else ''}.", r.status_code)
        if r.status_code == 401:
            raise EndpointError(f"The classifier at {self.base_url} requires an API key: set ANIMALCLF_API_KEY (or "
                                f"ANIMALCLF_API_KEY_FILE) where the UI runs.", 401)
        if 400 <= r.status_code < 500:
            raise EndpointError(f"The classifier rejected the request (HTTP {r.status_code}): {detail[:300]}", r.status_code)
        raise EndpointError(f"The classifier failed (HTTP {r.status_code}): {detail[:300]}", r.status_code)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", "/metadata")

    def predict(self, data: bytes, filename: str = "image", top_k: int = 5) -> dict[str, Any]:
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise EndpointError(f"{filename} is {len(data) / 1e6:.1f} MB; the classifier's limit is {self.max_bytes / 1e6:.1f} MB.", 413)
        return self._request("POST", "/predict", params={"top_k": top_k},
                             files={"file": (filename, data, "application/octet-stream")})

    def predict_batch(self, images: Sequence[tuple[str, bytes]], top_k: int = 5) -> dict[str, Any]:
        return self._request("POST", "/predict/batch", params={"top_k": top_k},
                             files=[("files", (name, data, "application/octet-stream")) for name, data in images])

