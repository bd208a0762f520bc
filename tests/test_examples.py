"""Every example config validates (a dry run builds every part), so examples cannot drift."""

import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO, distml

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


@pytest.fixture(scope="module")
def example_files():
    subprocess.run([sys.executable, str(REPO / "examples" / "make_example_files.py")], check=True,
                   timeout=120)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_dry_run(path: Path, example_files):
    res = distml("run", str(path.relative_to(REPO)), "--dry-run", timeout=90, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "plan for" in res.stdout
