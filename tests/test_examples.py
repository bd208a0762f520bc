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
def test_example_dry_run(path: Path, example_files, capsys, monkeypatch):
    # in this process (the CLI's own entry point): a subprocess per example cost 4 s of
    # interpreter and torch start-up each; the one below checks the command line itself
    from distml.cli import main
    monkeypatch.chdir(REPO)
    assert main(["run", str(path.relative_to(REPO)), "--dry-run"]) == 0, capsys.readouterr().err
    assert "plan for" in capsys.readouterr().out


def test_an_example_dry_run_from_the_command_line(example_files):
    res = distml("run", "examples/quickstart.toml", "--dry-run", timeout=90, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "plan for" in res.stdout
