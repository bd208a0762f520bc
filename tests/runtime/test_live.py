"""The launcher's live per-rank view, as functions of the ranks' step records."""

import io
import json

import pytest
from tiny_runs import digits_config

from distml.runtime.live import (EventTail, LiveView, rank_statuses, slowest_rank, status_table,
                                 summary_line, without_progress_bar)


def _rec(step, wall, compute, comm, wait, loss=1.0):
    return {"step": step, "epoch": step / 100, "loss": loss, "wall_seconds": wall,
            "compute_seconds": compute, "comm_seconds": comm, "wait_seconds": wall - compute - comm
            if wait is None else wait}


# rank 1 is a straggler in a synchronous run: same steps, 3x the compute, no waiting;
# rank 0 waits for it
RECORDS = {
    0: [_rec(10, 2.0, 0.5, 0.1, 1.4, loss=0.9), _rec(20, 4.0, 1.0, 0.2, 2.8, loss=0.7)],
    1: [_rec(10, 2.0, 1.8, 0.1, 0.1, loss=0.8), _rec(20, 4.0, 3.6, 0.2, 0.2, loss=0.6)],
}


def test_figures_come_from_the_last_interval():
    rows = rank_statuses(RECORDS, samples_per_step=32)
    r0, r1 = rows
    assert (r0.rank, r0.step, r0.loss, r1.loss) == (0, 20, 0.7, 0.6)
    assert r0.steps_per_s == pytest.approx(10 / 2.0)
    assert r0.samples_per_s == pytest.approx(32 * 10 / 2.0)
    assert r0.wait_share == pytest.approx(1.4 / 2.0)
    assert r1.wait_share == pytest.approx(0.1 / 2.0)
    assert r1.compute_per_step == pytest.approx(1.8 / 10)
    assert r0.comm_share == pytest.approx(0.1 / 2.0)
    assert slowest_rank(rows) == 1


def test_a_single_record_counts_from_the_start_and_an_async_laggard_is_slowest():
    records = {0: [_rec(30, 3.0, 2.4, 0.3, None)], 1: [_rec(10, 3.0, 2.7, 0.3, None)]}
    rows = rank_statuses(records, samples_per_step=None)
    assert [r.steps_per_s for r in rows] == pytest.approx([10.0, 10 / 3])
    assert rows[0].samples_per_s is None
    assert slowest_rank(rows) == 1
    assert slowest_rank(rows[:1]) is None          # nothing to compare with


def test_summary_line_and_table_say_the_same():
    rows = rank_statuses(RECORDS, samples_per_step=32)
    line = summary_line(rows)
    assert line == ("distml: 2 ranks: step 20, loss 0.6000-0.7000, comm 5%, wait 5%-70%, "
                    "320 samples/s in all, slowest rank 1")
    from rich.console import Console
    buf = io.StringIO()
    Console(file=buf, width=120).print(status_table(rows))
    text = buf.getvalue()
    cells = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.split() and ln.split()[0].isdigit()}
    assert cells == {"0": ["0", "20", "0.20", "0.7000", "160", "0.05", "5%", "70%"],
                     "1": ["1", "20", "0.20", "0.6000", "160", "0.18", "5%", "5%", "slowest"]}
    assert summary_line([]).startswith("distml: waiting")


def test_event_tail_reads_appended_lines_whole_and_restarts_on_a_new_file(tmp_path):
    path = tmp_path / "events-rank0.jsonl"
    tail = EventTail(path)
    assert tail.poll() == []                       # not written yet
    with open(path, "w") as f:
        f.write(json.dumps({"step": 1}) + "\n" + '{"step": ')     # the second line half written
        f.flush()
        assert tail.poll() == [{"step": 1}]
        f.write('2}\n{"step": 3}\n')
        f.flush()
        assert tail.poll() == [{"step": 2}, {"step": 3}]   # only the last two are kept
    path.unlink()
    path.write_text(json.dumps({"step": 7}) + "\n")     # a resume rewrote it
    assert tail.poll() == [{"step": 7}]
    with open(path, "r+") as f:                         # rewritten in place, longer: the old
        f.write(json.dumps({"step": 8, "loss": 0.5}) + "\n" + json.dumps({"step": 9}) + "\n")
    tail.poll()                                         # offset lands mid-line
    assert tail.poll() == [{"step": 8, "loss": 0.5}, {"step": 9}]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _write_records(run_dir):
    for rank, recs in RECORDS.items():
        (run_dir / f"events-rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_view_draws_a_table_on_a_terminal_and_lines_elsewhere(tmp_path):
    _write_records(tmp_path)
    term = _Terminal()
    view = LiveView(tmp_path, 2, 32, term)
    view.close()
    assert "slowest" in term.getvalue() and "samples/s" in term.getvalue()

    log = io.StringIO()
    view = LiveView(tmp_path, 2, 32, log, line_every_s=0.0)
    view.tick()
    view.close()
    assert log.getvalue() == summary_line(rank_statuses(RECORDS, 32)) + "\n"


def test_workers_draw_no_bar_of_their_own_under_the_view():
    config = {"name": "x", "train": {"progress": True, "epochs": 2}}
    assert without_progress_bar(config) == {"name": "x", "train": {"progress": False, "epochs": 2}}
    assert config["train"]["progress"] is True      # the caller's dict is unchanged


LIVE_CONFIG = digits_config("live", """
[train]
epochs = 10
max_steps = 60
log_every = 5
eval_every = 30
[faults]
straggler = { ranks = [1], slowdown = 3.0 }
compute_s = 0.02
""")


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_a_run_on_a_terminal_shows_every_rank_and_the_straggler(tmp_path):
    """A real run with its stderr on a pseudo-terminal: the table replaces rank 0's bar."""
    import os
    import pty
    import re
    import subprocess
    import sys

    from procs import _kill_group

    (tmp_path / "c.toml").write_text(LIVE_CONFIG)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "distml", "run", str(tmp_path / "c.toml"), "--out",
                          str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert p.wait(timeout=120) == 0
    finally:
        _kill_group(p.pid)
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    screen = re.sub(r"\x1b\[[0-9;?]*[ABGJK]", "\n", screen)   # the redraw's cursor moves and erases
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen)     # styles
    assert "samples/s" in screen and "compute s/step" in screen, screen[-3000:]
    final = {m[0]: m for m in re.findall(r"^\s*([01])\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s.*?(slowest)?\s*$",
                                         screen, re.M)}
    assert final["0"][1] == final["1"][1] == "60", screen[-3000:]     # the last frame: every rank
    assert final["1"][4] == "slowest" and final["0"][4] == ""
    assert "train:" not in screen and "step/s]" not in screen          # no tqdm bar beside it
