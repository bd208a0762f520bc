"""Command-line checks made before any process starts (issue 19): every compare variant,
the examples' data-file hint (no worker is started here)."""

import contextlib
import io
from pathlib import Path

import pytest

from distml.cli import main

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_compare_checks_every_variant_before_the_first_run(tmp_path):
    """Before: the first variant trained fully, then 'fast' was found not to be a number."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "cmp"\n[data]\nsource = { name = "sklearn", dataset = "digits" }\n'
                   '[model]\nname = "mlp"\n[train]\nmax_steps = 2\nprogress = false\n')
    rc, out, err = cli("compare", str(cfg), "--vary", "optim.lr=0.1,fast", "--out", str(tmp_path / "cmp"))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("distml: error: variant lr=fast:") and "lr" in lines[0], err
    assert not (tmp_path / "cmp").exists()                 # nothing ran, nothing was written
    rc, out, err = cli("compare", str(cfg), "--vary", "workers=2,1", "--vary", "algorithm.name=gossip",
                       "--out", str(tmp_path / "cmp"))
    assert rc == 2 and "variant workers=1,name=gossip: gossip needs at least 2 workers" in err, err
    assert not (tmp_path / "cmp").exists()


def test_examples_missing_files_name_the_command_that_makes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # examples/data/... is relative: not found here
    rc, out, err = cli("run", str(REPO / "examples" / "data_csv.toml"), "--dry-run")
    assert rc == 2 and "not found" in err, err
    assert f"the example data files are made by `python {REPO / 'examples' / 'make_example_files.py'}`" in err
    rc, out, err = cli("run", str(REPO / "examples" / "quickstart.toml"), "--dry-run",
                       "--set", "data.source={name='csv', path='nope.csv'}")
    assert rc == 2 and "make_example_files" in err    # any config in examples/ gets the hint
    other = tmp_path / "mine.toml"
    other.write_text("[data]\nsource = { name = 'csv', path = 'nope.csv' }\n")
    rc, out, err = cli("run", str(other), "--dry-run")
    assert rc == 2 and "not found" in err and "make_example_files" not in err


def test_list_algorithm_shows_what_each_supports():
    """`distml list algorithm` prints each algorithm's declared Supports and buffer policy."""
    rc, out, _ = cli("list", "algorithm")
    assert rc == 0
    blocks: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        if not line.startswith("   "):          # "  name  summary" starts an entry
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + line + "\n"
    assert "supports: precision fp32/bf16/fp16; models any; buffers rank0; accumulate_steps, " \
           "clip_grad_norm, distml.wrap" in blocks["sync_sgd"]
    assert "supports: precision fp32; models sequential; buffers owner" in blocks["pipeline"]
