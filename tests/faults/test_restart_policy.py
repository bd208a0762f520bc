"""The local launcher's restart policy, without processes: what it restarts, from where, and
what it says (the end-to-end restarts are in test_kill.py)."""

from __future__ import annotations

import json

import pytest

import distml.api as api
import distml.runtime.launcher as launcher
from distml.config import load_config
from distml.runtime.launcher import LaunchFailed, WorkerExit, launch_local_restarting
from distml.runtime.worker import EXIT_USER, WorkerJob


def _failure(code: int = -9, line: str = "killed by SIGKILL", rank: int = 1) -> LaunchFailed:
    first = WorkerExit(rank, code, line, 0.0)
    return LaunchFailed(first, [first])


def _scripted(monkeypatch, outcomes, on_call=None):
    """Replace launch_local: each call pops an outcome (an exception to raise, or None)."""
    jobs = []

    def fake(job, world, timeout_s, replacements=0, say=None):
        jobs.append(job)
        if on_call is not None:
            on_call(len(jobs))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return 0            # replacements started (on_worker_loss = "continue" only)
    monkeypatch.setattr(launcher, "launch_local", fake)
    return jobs


def test_restarts_resume_from_the_latest_checkpoint_and_say_so(monkeypatch, tmp_path):
    def commit_after_first(n):
        if n == 1:             # the first attempt committed step 40 before it died
            (tmp_path / "checkpoints").mkdir()
            (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"step": 40, "world": 2}))
    jobs = _scripted(monkeypatch, [_failure(), _failure(1, "rank 0: internal error: boom", 0), None],
                     commit_after_first)
    said = []
    n = launch_local_restarting(WorkerJob(config={}, out_dir=str(tmp_path)), 2, 5.0, 3, say=said.append)
    assert n == 2 and len(jobs) == 3
    assert said == ["distml: restart 1/3: rank 1: killed by SIGKILL; resuming from the checkpoint at step 40",
                    "distml: restart 2/3: rank 0: rank 0: internal error: boom; resuming from the "
                    "checkpoint at step 40"]
    assert [j.resume for j in jobs] == [False, True, True]
    assert [j.restarts for j in jobs] == [0, 1, 2]
    assert [e["resumed_from_step"] for e in jobs[2].restart_log] == [40, 40]


def test_without_a_checkpoint_a_restart_starts_over_and_says_why(monkeypatch, tmp_path):
    jobs = _scripted(monkeypatch, [_failure(), None])
    said = []
    launch_local_restarting(WorkerJob(config={}, out_dir=str(tmp_path)), 2, 5.0, 1, say=said.append,
                            why_no_checkpoint="cocoa writes no mid-run checkpoints")
    assert said == ["distml: restart 1/1: rank 1: killed by SIGKILL; cocoa writes no mid-run "
                    "checkpoints: starting over from step 0"]
    assert [j.resume for j in jobs] == [False, False]


def test_gives_up_after_max_restarts_and_never_restarts_a_user_error(monkeypatch, tmp_path):
    job = WorkerJob(config={}, out_dir=str(tmp_path))
    jobs = _scripted(monkeypatch, [_failure(), _failure()])
    with pytest.raises(LaunchFailed):
        launch_local_restarting(job, 2, 5.0, 1, say=lambda line: None)
    assert len(jobs) == 2
    jobs = _scripted(monkeypatch, [_failure(EXIT_USER, "loss became nan at step 3")])
    with pytest.raises(LaunchFailed):
        launch_local_restarting(job, 2, 5.0, 5, say=lambda line: None)
    assert len(jobs) == 1


@pytest.mark.parametrize("config,why", [
    ({"algorithm": {"name": "cocoa"}, "train": {"checkpoint_every": 10}}, "cocoa writes no mid-run checkpoints"),
    ({"algorithm": {"name": "gossip"}}, "train.checkpoint_every = 0"),
    ({"algorithm": {"name": "ps"}, "train": {"checkpoint_every": 10}}, None),
])
def test_the_reason_a_restart_would_start_over(config, why):
    assert api._why_no_checkpoint(load_config(base=config)) == why


def test_bad_max_restarts_is_refused():
    with pytest.raises(ValueError, match="max_restarts must be an integer >= 0, got -1"):
        api.run({}, max_restarts=-1)


def test_cli_refuses_a_negative_count_and_distml_restarts_under_torchrun(tmp_path, monkeypatch, capsys):
    from distml.cli import main
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = { name = "sklearn", dataset = "digits" }\n')
    assert main(["run", str(cfg), "--max-restarts", "-1", "--dry-run"]) == 2
    assert "--max-restarts must be >= 0, got -1" in capsys.readouterr().err
    for k, v in {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(cfg), "--max-restarts", "2"]) == 2
    assert "pass --max-restarts to torchrun" in capsys.readouterr().err
