"""HTTP client of the classifier endpoint, kept out of the Streamlit script so it can be tested.

Every failure becomes :class:`EndpointError` with a message meant for the page: the endpoint is
down, timed out, overloaded, or rejected the image (and why).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import requests

from animalclf.data import IMAGE_EXTENSIONS
from animalclf.predict import MAX_BYTES

log = logging.getLogger(__name__)

__all__ = ["EndpointError", "Client", "default_endpoint", "default_gallery", "gallery_images", "load_report", "MAX_UPLOAD_BYTES"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
MAX_UPLOAD_BYTES = MAX_BYTES  # the API's per-image limit; app/.streamlit/config.toml matches it
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
    """``Client(url).predict(bytes)`` → the endpoint's JSON, or :class:`EndpointError`."""

    def __init__(self, base_url: Optional[str] = None, timeout: float = 30.0):
        self.base_url = (base_url or default_endpoint()).rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, route: str, **kw: Any) -> dict[str, Any]:
        url = f"{self.base_url}{route}"
        try:
            r = requests.request(method, url, timeout=self.timeout, **kw)
        except requests.ConnectionError:
            raise EndpointError(
                f"Cannot reach the classifier at {self.base_url}: is it running? Start it with "
                f"`python serve/deploy.py --model models:/animalclf@champion` or set ANIMALCLF_ENDPOINT.") from None
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
        if 400 <= r.status_code < 500:
            raise EndpointError(f"The classifier rejected the request (HTTP {r.status_code}): {detail[:300]}", r.status_code)
        raise EndpointError(f"The classifier failed (HTTP {r.status_code}): {detail[:300]}", r.status_code)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", "/metadata")

    def predict(self, data: bytes, filename: str = "image", top_k: int = 5) -> dict[str, Any]:
        if len(data) > MAX_UPLOAD_BYTES:
            raise EndpointError(f"{filename} is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes.", 413)
        return self._request("POST", "/predict", params={"top_k": top_k},
                             files={"file": (filename, data, "application/octet-stream")})

    def predict_batch(self, images: Sequence[tuple[str, bytes]], top_k: int = 5) -> dict[str, Any]:
        return self._request("POST", "/predict/batch", params={"top_k": top_k},
                             files=[("files", (name, data, "application/octet-stream")) for name, data in images])


def load_report(model_version: str) -> tuple[Optional[dict[str, Any]], str]:
    """The ``report/report.json`` of the run behind a registered ``NAME/VERSION`` (as /metadata
    reports it for ``models:/`` refs), plus a note saying where it came from or why not."""
    if "/" not in model_version or model_version.startswith(("checkpoint:", "runs:/", "models:/")):
        return None, f"model {model_version!r} is not a registered MLflow model version; no report to fetch."
    name, version = model_version.rsplit("/", 1)
    try:
        import mlflow
        from mlflow import MlflowClient

        from animalclf.tracking import configure

        configure()
        mv = MlflowClient().get_model_version(name, version)
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="report/report.json")
        return json.loads(Path(path).read_text()), f"report of run {mv.run_id} ({name} version {version})"
    except Exception as e:  # no store, no run, no artifact: the page says so
        return None, f"no report for {name} version {version} in MLflow ({type(e).__name__}: {str(e)[:200]})"
