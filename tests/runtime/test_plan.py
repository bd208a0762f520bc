"""The plan a person reads (``distml run --dry-run``): one test per algorithm family, each
checking the lines that say what the run will really do (no processes)."""

import contextlib
import io
import json
import re

import pytest

from distml.cli import main

pytestmark = pytest.mark.timeout(120)

DIGITS = {"source": {"name": "sklearn", "dataset": "digits"}, "batch_size": 32}
CANCER = {"source": {"name": "sklearn", "dataset": "breast_cancer"}, "batch_size": 32}


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def dry_run(tmp_path, doc: dict, *extra: str) -> str:
    text = "\n".join(f"{k} = {_toml(v)}" for k, v in doc.items())
    path = tmp_path / "c.toml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["run", str(path), "--dry-run", "--out", str(tmp_path / "results"), *extra])
    assert rc == 0, err.getvalue()
    text = out.getvalue()
    assert "{" not in text and "None" not in text and "backend auto" not in text, text
    assert re.search(r"^  results\s+" + re.escape(str(tmp_path / "results")) + "$", text, re.M), text
    return text


def row(text: str, key: str) -> str:
    m = re.search(rf"^  {re.escape(key)}\s+(.*)$", text, re.M)
    assert m, f"no '{key}' row in\n{text}"
    return m.group(1)


def test_data_parallel_plan_has_one_shard_per_worker(tmp_path):
    text = dry_run(tmp_path, {"name": "dp", "workers": 2, "data": DIGITS, "model": {"name": "mlp"},
                              "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                              "train": {"epochs": 2}})
    assert text.startswith("plan for 'dp': 2 worker(s) in 2 process(es), backend gloo on cpu")
    assert row(text, "optimizer") == "sgd(lr=0.1, momentum=0.9), schedule constant"
    shards = re.findall(r"^  (\d)\s+worker.*shard of (\d+) samples/epoch, (\d+) steps/epoch$", text, re.M)
    assert [s[0] for s in shards] == ["0", "1"]
    steps = int(shards[0][2])                  # 1438 digits / 2 workers / 32 per batch
    assert steps == 1438 // 2 // 32 and row(text, "steps") == f"{2 * steps} ({steps} per epoch)"


def test_parameter_server_plan_names_the_server_rank(tmp_path):
    text = dry_run(tmp_path, {"name": "ps", "workers": 2, "data": DIGITS, "model": {"name": "mlp"},
                              "algorithm": {"name": "ps", "servers": 1}})
    assert "2 worker(s) in 3 process(es)" in text
    assert re.search(r"^  2\s+server\s+parameter server$", text, re.M), text


@pytest.mark.parametrize("algorithm,role,work", [
    ("pipeline", "pipeline stage", "stage 2 of 2 (computes the loss)"),
    ("tensor_parallel", "tensor slice", "1/2 of every column/row-parallel Linear pair"),
])
def test_model_parallel_plans_show_stages_not_shards(tmp_path, algorithm, role, work):
    text = dry_run(tmp_path, {"name": "mp", "workers": 2, "data": DIGITS,
                              "model": {"name": "mlp", "hidden": [32, 32]},
                              "algorithm": {"name": algorithm}})
    assert "shard of" not in text and "partition" not in text
    assert re.search(rf"^  1\s+{role}\s+{re.escape(work)}", text, re.M), text
    # every rank walks all 1438 samples: 44 full batches of 32 per epoch (not 22 per shard)
    assert row(text, "steps") == "44 (44 per epoch)"


def test_feature_split_plan_shows_feature_blocks(tmp_path):
    text = dry_run(tmp_path, {"name": "fs", "workers": 2, "data": CANCER,
                              "model": {"name": "softmax", "bias": False},
                              "optim": {"name": "gd", "lr": 1.0}, "algorithm": {"name": "feature_split"},
                              "train": {"epochs": 3}})
    assert "shard of" not in text
    assert re.search(r"^  0\s+feature block\s+feature columns 0\.\.14 of 30", text, re.M), text
    assert re.search(r"^  1\s+feature block\s+feature columns 15\.\.29 of 30", text, re.M), text
    assert row(text, "steps") == "3 (1 per epoch)"          # full-batch gd: one step an epoch


def test_cocoa_plan_has_no_optimizer_and_disjoint_rows(tmp_path):
    text = dry_run(tmp_path, {"name": "cocoa", "workers": 2, "data": CANCER,
                              "model": {"name": "linear_svm", "bias": False},
                              "algorithm": {"name": "cocoa", "lam": 0.01}, "train": {"epochs": 5}})
    assert row(text, "optimizer") == "none: CoCoA's local solver is SDCA"
    assert "sgd" not in text
    assert re.search(r"^  0\s+worker \(SDCA\)\s+228 of 455 rows", text, re.M), text
    assert re.search(r"^  1\s+worker \(SDCA\)\s+227 of 455 rows", text, re.M), text
    assert row(text, "steps") == "5 (1 per epoch)"          # one pass of SDCA per round


def test_online_data_plan_says_online(tmp_path):
    text = dry_run(tmp_path, {"name": "online", "workers": 2,
                              "data": {"source": {"name": "synthetic", "kind": "teacher_mlp",
                                                  "mode": "online", "n_test": 100},
                                       "samples_per_epoch": 1280, "batch_size": 32},
                              "model": {"name": "mlp"}})
    assert row(text, "train / test") == "online, 640 samples per epoch / 100 samples"


def test_json_plan_carries_the_resolved_backend_roles_and_folder(tmp_path):
    out = io.StringIO()
    (tmp_path / "c.toml").write_text('name = "j"\n[data]\nsource = { name = "sklearn", dataset = "digits" }\n[model]\nname = "mlp"')
    with contextlib.redirect_stdout(out):
        assert main(["run", str(tmp_path / "c.toml"), "--dry-run", "--json",
                     "--out", str(tmp_path / "r")]) == 0
    plan = json.loads(out.getvalue())
    assert plan["backend"] == "gloo" and plan["device"] == "cpu"
    assert plan["run_dir"] == str(tmp_path / "r") and [r["rank"] for r in plan["roles"]] == [0, 1]
    assert not (tmp_path / "r").exists()              # a dry run creates nothing


def test_full_batch_plan_agrees_with_its_step_count(tmp_path):
    text = dry_run(tmp_path, {"name": "gd", "workers": 2, "data": CANCER, "model": {"name": "softmax"},
                              "optim": {"name": "gd", "lr": 0.5}, "train": {"epochs": 4}})
    assert row(text, "steps") == "4 (1 per epoch)"
    assert re.search(r"^  1\s+worker\s+shard of 227 samples, one full-batch step per epoch$", text, re.M), text
