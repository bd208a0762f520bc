"""Property-based fuzzing of the config loader and the CLI through ``distml run --dry-run``.

Every input must end in a valid plan (exit 0) or one line ``distml: error: ...`` with exit
code 2: never a traceback, never a hang. The bulk runs in-process through
``distml.cli.main`` (a dry run takes milliseconds there); a handful go through a real
``python -m distml`` process. Inputs are drawn from the real schema (``fuzzgen.py``).
The number of inputs tried is printed at the end of the module; set
``DISTML_FUZZ_EXAMPLES`` to scale every test's count (the default is the suite's).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field

import fuzzgen as fg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distml.cli import main
from procs import session

SCALE = int(os.environ.get("DISTML_FUZZ_EXAMPLES", "300")) / 300
LIMIT = 120 * max(1.0, SCALE)       # seconds for the biggest test, scaled with the counts


def fuzz(n: int):
    """Fixed, reproducible example counts (no example database in the repository)."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                             HealthCheck.data_too_large,
                                                             HealthCheck.large_base_example])


@dataclass
class Tally:
    inputs: dict[str, int] = field(default_factory=dict)
    plans: int = 0
    errors: int = 0
    slowest: float = 0.0

    def add(self, test: str, rc: int, seconds: float) -> None:
        self.inputs[test] = self.inputs.get(test, 0) + 1
        self.plans += rc == 0
        self.errors += rc == 2
        self.slowest = max(self.slowest, seconds)


@pytest.fixture(scope="module")
def env(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("fuzz")
    files = fg.make_data_files(folder / "data")
    tally = Tally()
    yield {"bases": fg.base_documents(files), "cfg": folder / "c.toml", "tally": tally}
    if tally.inputs:       # printed past pytest's capture, so `pytest -q` shows the count
        total = sum(tally.inputs.values())
        parts = ", ".join(f"{k} {v}" for k, v in tally.inputs.items())
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nconfig/CLI fuzz: {total} inputs ({parts}): {tally.plans} valid plans, "
                  f"{tally.errors} one-line errors, 0 tracebacks; slowest {tally.slowest:.2f} s")


def dry_run(argv: list[str]) -> tuple[int, str, str, float]:
    """``distml ARGV`` in this process: exit code, stdout, stderr, seconds."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:          # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def check(rc: int, out: str, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}\n{err}"
    assert rc in (0, 2), f"exit code {rc} for\n{what}\n{err[-2000:]}"
    if rc == 0:
        assert out.startswith("plan for ") or out.lstrip().startswith("{"), out[:500]
    else:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("distml: error: "), f"{what}\n{err!r}"


def run_text(env, text: str | bytes, extra: list[str], test: str) -> tuple[int, str]:
    """Dry-run a config text with extra arguments, check the contract; exit code and stderr."""
    p = env["cfg"]
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    rc, out, err, sec = dry_run(["run", str(p), "--dry-run", *extra])
    env["tally"].add(test, rc, sec)
    check(rc, out, err, f"{text!r}\n{extra!r}")
    return rc, err


@pytest.mark.timeout(LIMIT)
def test_fuzzed_documents_and_overrides(env):
    @fuzz(300)
    @given(data=st.data())
    def body(data):
        doc = data.draw(fg.documents(env["bases"]), label="document")
        overrides = data.draw(fg.overrides(), label="overrides")
        run_text(env, fg.to_toml(doc), [f"--set={o}" for o in overrides], "documents")
    body()


@pytest.mark.timeout(LIMIT / 2)
def test_fuzzed_overrides_on_valid_documents(env):
    @fuzz(100)
    @given(data=st.data())
    def body(data):
        doc = data.draw(st.sampled_from(env["bases"]), label="base")
        overrides = data.draw(fg.overrides(), label="overrides")
        run_text(env, fg.to_toml(doc), [f"--set={o}" for o in overrides], "overrides")
    body()


@pytest.mark.timeout(LIMIT / 2)
def test_garbage_and_damaged_toml(env):
    texts = st.one_of(fg.GARBAGE, st.binary(max_size=300),
                      st.sampled_from(env["bases"]).map(fg.to_toml).flatmap(fg.damaged))

    @fuzz(150)
    @given(text=texts)
    def body(text):
        run_text(env, text, [], "garbage")
    body()


ARG_TOKENS = st.one_of(
    st.tuples(st.just("--workers"), st.one_of(st.integers(-3, 3000).map(str), fg.TEXT)),
    st.tuples(st.just("--stop-after"), st.one_of(st.integers(-3, 10).map(str), fg.TEXT)),
    st.tuples(st.just("--set"), fg.TEXT), st.tuples(st.just("--json")),
    st.tuples(st.just("--out"), fg.TEXT), st.tuples(fg.TEXT.filter(lambda t: t != "--dry-run")))


@pytest.mark.timeout(LIMIT / 2)
def test_fuzzed_command_line(env):
    """Arguments around ``run CONFIG --dry-run``: argparse's own errors are one line too."""
    @fuzz(100)
    @given(base=st.sampled_from(range(7)), tokens=st.lists(ARG_TOKENS, max_size=3))
    def body(base, tokens):
        p = env["cfg"]
        p.write_text(fg.to_toml(env["bases"][base]), encoding="utf-8")
        argv = ["run", str(p), "--dry-run", *[t for group in tokens for t in group]]
        rc, out, err, sec = dry_run(argv)
        env["tally"].add("argv", rc, sec)
        check(rc, out, err, repr(argv))
    body()


# ---- what the fuzzer found (each crashed or hung before its fix) ---------------------------
BASE = fg.base_documents({"csv": "", "npz": "", "svmlight": "", "dir": ""})[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("override,message", [
    ("train.epochs=inf", "train.epochs: must be a finite number, got inf"),      # OverflowError
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),              # became None
    ("data.partition={name='dirichlet',alpha=inf}", "alpha: must be a finite number"),
    ("comm.timeout_s=1e308", "comm.timeout_s: Input should be less than or equal to 604800"),
    ("comm.latency_ms=1e300", "comm.latency_ms"),                                # a run that hangs
    ("model.hidden=[2147483648]", "model 'mlp' does not fit in memory"),         # RuntimeError
    ("data.source={name='synthetic',kind='logistic_regression',n_train=2147483648}",
     "synthetic data of 2147485648 samples"),                                    # ran out of memory
    ("algorithm={name='ps',servers=4611686018427387904}", "at most 2048"),       # hung in the plan
    ("seed=9223372036854775807", "seed: Input should be less than 4294967296"),  # overflow in workers
    ("model.name=\"a\\nb\\u001d\"", "unknown model 'a\\nb\\x1d'"),               # a 3-line message
])
def test_found_by_fuzzing(env, override, message):
    rc, err = run_text(env, fg.to_toml(BASE), [f"--set={override}"], "regressions")
    assert rc == 2 and message in err, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("doc,extra,message", [
    # what the real run refused only after starting its workers (issue 19)
    (BASE, ["--set=train.device='cuda'"], "train.device = 'cuda' but no CUDA device is visible"),
    (BASE, ["--set=comm.backend='nccl'"], "comm.backend = 'nccl' needs CUDA devices"),
    (BASE, ["--out", "{file}/run"], "is not a folder; choose another --out"),
    (BASE, ["--out", "x\x00y"], "choose another --out"),
    ("gossip", ["--set=workers=1"], "gossip needs at least 2 workers"),
    # --set blamed for what it set; malformed values are errors, not strings
    (BASE, ["--set=workers=0"], "--set workers=0: workers: Input should be greater than or equal to 1"),
    (BASE, ["--set=optim.lr=0.1.2"], "--set optim.lr=0.1.2: not a valid TOML value"),
    (BASE, ["--set=model.hidden=[4"], "--set model.hidden=[4: not a valid TOML value"),
])
def test_checks_of_the_real_run_in_the_dry_run(env, monkeypatch, tmp_path, doc, extra, message):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)    # a CPU host, GPU or not
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    (tmp_path / "file").write_text("")
    extra = [e.replace("{file}", str(tmp_path / "file")) for e in extra]
    if isinstance(doc, str):         # a base document with real data files, by algorithm
        doc = next(d for d in env["bases"] if d["algorithm"]["name"] == doc)
    rc, err = run_text(env, fg.to_toml(doc), extra, "new checks")
    assert rc == 2 and message in err, err


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_a_handful_through_a_real_process(env, tmp_path):
    """The same contract from a shell: exit code 2 and one line on stderr, or a plan."""
    cases = [
        (b"\xff\xfe garbage \x00[[[", [], 2),
        (fg.to_toml({**BASE, "train": {"max_steps": 3, "progress": False, "epo\nchs": 1}}),
         ["--set=optim.lr=-inf", "--workers", "0x10"], 2),
        (fg.to_toml(BASE), ["--set=model.hidden=[4]"], 0),
    ]
    with contextlib.ExitStack() as stack:        # side by side: each spends seconds importing torch
        procs = []
        for i, (text, extra, want) in enumerate(cases):
            p = tmp_path / f"c{i}.toml"
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            cmd = [sys.executable, "-m", "distml", "run", str(p), "--dry-run", *extra]
            procs.append((stack.enter_context(session(cmd)), text, extra, want))
        for proc, text, extra, want in procs:
            out, err = proc.communicate(timeout=90)
            env["tally"].add("subprocess", proc.returncode, 0.0)
            check(proc.returncode, out, err, f"{text!r} {extra}")
            assert proc.returncode == want, err
