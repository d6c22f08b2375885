"""A project that needs a package no node has: ``animalclf-probe`` (module ``animalclf_probe``), a
pure-Python wheel built here in versions 1.0 and 2.0, asked for as ``>=1.0`` in a copy of
pyproject.toml and pinned to 1.0 in a copy of constraints.txt. tests/test_jobenv.py resolves it
with pip, tests/test_multinode.py installs it through a job's runtime env."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "animalclf-probe"
PINNED, NEWEST = "1.0", "2.0"


def probe_wheel(folder: Path, version: str) -> Path:
    """The wheel of ``animalclf-probe`` at ``version`` in ``folder``."""
    name, info = "animalclf_probe", f"animalclf_probe-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: animalclf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for p, t in files.items()] + [f"{info}/RECORD,,"]
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, t in {**files, f"{info}/RECORD": "\n".join(record) + "\n"}.items():
            z.writestr(p, t)
    return path


def probe_project(tmp: Path) -> tuple[Path, Path]:
    """(project, wheels): ``project`` holds this repository's pyproject.toml with ``animalclf-probe>=1.0``
    added and its constraints.txt with ``animalclf-probe==1.0`` added; ``wheels`` both versions."""
    r = subprocess.run([sys.executable, "-c", "import animalclf_probe"], capture_output=True)
    assert r.returncode != 0, "animalclf_probe is installed here: the probe would prove nothing"
    wheels, project = tmp / "wheels", tmp / "project"
    wheels.mkdir()
    project.mkdir()
    for version in (PINNED, NEWEST):
        probe_wheel(wheels, version)
    text = (ROOT / "pyproject.toml").read_text()
    assert "dependencies = [\n" in text
    (project / "pyproject.toml").write_text(text.replace("dependencies = [\n", f'dependencies = [\n    "{PROBE}>=1.0",\n', 1))
    shutil.copy(ROOT / "constraints.txt", project / "constraints.txt")
    with (project / "constraints.txt").open("a") as f:
        f.write(f"{PROBE}=={PINNED}\n")
    return project, wheels
