"""TensorBoard event files and per-rank progress lines from real runs.

The event files are read back with TensorBoard's own reader and compared with the
JSON-lines files the same sink wrote, so both views of a run hold the same numbers.
"""

import json
import re
from pathlib import Path

import pytest

from procs import distml
from tiny_runs import digits_config

pytestmark = [pytest.mark.multiprocess]


def _config(algorithm: str) -> str:
    return digits_config("obs", f"""
[algorithm]
name = "{algorithm}"
[train]
max_steps = 20
log_every = 5
eval_every = 10
progress = false
""")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        points = acc.Scalars(tag)
        out[tag] = {e.step: e.value for e in points}
        assert len(out[tag]) == len(points), f"{tag}: a step written twice"
    return out


def _assert_same(scalars: dict[str, dict[int, float]], records: list[dict], prefix: str,
                 keys: list[str]) -> None:
    for key in keys:
        expected = {r["step"]: r[key] for r in records if r.get(key) is not None}
        assert expected, f"no {key} in the records"
        got = scalars[f"{prefix}/{key}"]
        assert got.keys() == expected.keys(), key
        for step, value in expected.items():     # event files store float32
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("algorithm, algorithm_key", [("sync_sgd", None),
                                                      ("gossip", "consensus_distance"),
                                                      ("ps", "staleness_max")])
def test_tensorboard_scalars_equal_the_jsonl_records(tmp_path, algorithm, algorithm_key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(_config(algorithm))
    out = tmp_path / "run"
    res = distml("run", str(cfg), "--out", str(out), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]

    step_keys = ["loss", "lr", "bytes_sent", "bytes_received", "compute_seconds", "comm_seconds",
                 "wait_seconds"]
    for rank in (0, 1):
        events = _jsonl(out / f"events-rank{rank}.jsonl")
        assert [e["step"] for e in events] == [5, 10, 15, 20]
        scalars = _scalars(out / "tensorboard" / f"rank{rank}")
        _assert_same(scalars, events, "train", step_keys)
        assert not any(t.startswith("eval/") for t in scalars) or rank == 0

    evals = _jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 10, 20]
    eval_keys = ["test_accuracy", "test_loss"] + ([algorithm_key] if algorithm_key else [])
    _assert_same(_scalars(out / "tensorboard" / "rank0"), evals, "eval", eval_keys)


@pytest.mark.timeout(120)
def test_rank_logs_hold_progress_lines_and_tensorboard_can_be_off(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(_config("sync_sgd"))
    out = tmp_path / "run"
    res = distml("run", str(cfg), "--out", str(out), "--set", "train.tensorboard=false", timeout=100)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "tensorboard").exists()
    for rank in (0, 1):
        text = (out / "logs" / f"rank{rank}.log").read_text()
        lines = re.findall(r"progress at step (\d+): loss ([\d.e+-]+)", text)
        assert lines, text
        events = {e["step"]: e for e in _jsonl(out / f"events-rank{rank}.jsonl")}
        for step, loss in lines:       # each line shows the record written at that step
            assert float(loss) == pytest.approx(events[int(step)]["loss"], rel=1e-3)
    rank0 = (out / "logs" / "rank0.log").read_text()
    evals = _jsonl(out / "eval.jsonl")
    for e in evals:
        m = re.search(rf"evaluation at step {e['step']}: test_loss ([\d.e+-]+)", rank0)
        assert m and float(m.group(1)) == pytest.approx(e["test_loss"], rel=1e-3), rank0


def test_tensorboard_true_without_the_package_is_refused_before_any_process(tmp_path, monkeypatch):
    import distml.config as config
    from distml.errors import ConfigError
    monkeypatch.setattr(config, "tensorboard_installed", lambda: False)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        config.parse_config({"train": {"tensorboard": True}})
    assert config.parse_config({"train": {"tensorboard": False}}).train.tensorboard is False


def test_a_resumed_sink_replaces_the_records_after_the_checkpoint_in_both_views(tmp_path):
    """A rank that crashed after its checkpoint at step 10 had logged 15 and 20; the
    restarted rank logs them again: the JSON lines and TensorBoard both keep the new ones."""
    from distml.runtime.metrics import RunLog

    def write(resume_step, steps, loss):
        sink = RunLog(tmp_path, 0, resume_step=resume_step, tensorboard=True)
        for s in steps:
            sink.record("step", {"step": s, "loss": loss(s)})
        sink.record("eval", {"step": steps[-1], "test_loss": loss(steps[-1])})
        sink.close()

    write(None, [5, 10, 15, 20], lambda s: 100.0 + s)
    write(10, [15, 20, 25], lambda s: float(s))
    events = _jsonl(tmp_path / "events-rank0.jsonl")
    assert [(e["step"], e["loss"]) for e in events] == [(5, 105.0), (10, 110.0), (15, 15.0), (20, 20.0),
                                                        (25, 25.0)]
    scalars = _scalars(tmp_path / "tensorboard" / "rank0")
    _assert_same(scalars, events, "train", ["loss"])
    _assert_same(scalars, _jsonl(tmp_path / "eval.jsonl"), "eval", ["test_loss"])

    write(None, [5], lambda s: 1.0)            # a run started over keeps nothing of the old one
    assert _scalars(tmp_path / "tensorboard" / "rank0")["train/loss"] == {5: 1.0}
