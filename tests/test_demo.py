"""The demo's own checks (the whole demo runs in `make demo`, not in the test suite)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_without_data_says_where_to_get_it(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "demo.py"), "--data", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: No dataset") and "DATA=" in line and "Kaggle" in line
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()
