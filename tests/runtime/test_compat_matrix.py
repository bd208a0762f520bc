"""The compatibility matrix: every algorithm × model × precision trains or is refused.

Each cell is either refused before any process starts (``distml.plan`` raises a user
error: one line, a reason) or it trains, and then:
- the loss went down (the final evaluation's test loss is below the step-0 evaluation's);
- the saved model's buffers (BatchNorm running statistics) follow the algorithm's declared
  policy, checked against every rank's own buffers, and are not their initial values;
- ``distml evaluate`` on ``model.pt`` reproduces the run's ``test_loss`` and
  ``test_accuracy`` (so the saved model is the evaluated one).

Cells train in three long-lived worlds (1, 2 and 3 processes: one per launch size) that
run the worker's own code path for one cell after another (``matrix_world.py``), so the
whole matrix costs its training, not a process start per cell.

``python tests/runtime/test_compat_matrix.py`` prints the matrix as the Markdown table of
docs/models.md (planning only, no training).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))      # tests/procs.py

from procs import side_by_side  # noqa: E402

import distml  # noqa: E402
from distml.algorithms import ALGORITHMS  # noqa: E402
from distml.errors import UserError  # noqa: E402

DIGITS = {"name": "sklearn", "dataset": "digits"}
DIGIT_IMAGES = {"name": "sklearn", "dataset": "digits", "images": True}
IMAGE_OPTIM = {"name": "momentum", "lr": 0.05, "momentum": 0.9}

# model column -> (model spec, data source, optimizer): tiny, so a cell trains in about a second
MODELS = {
    "mlp": ({"name": "mlp", "hidden": [32]}, DIGITS, IMAGE_OPTIM),
    "cnn_bn": ({"name": "cnn", "channels": [4, 8], "hidden": 16, "batchnorm": True},
               DIGIT_IMAGES, IMAGE_OPTIM),
    "resnet": ({"name": "resnet", "depth": 8, "width": 4}, DIGIT_IMAGES, IMAGE_OPTIM),
    "transformer_lm": ({"name": "transformer_lm", "d_model": 32, "n_layers": 2, "n_heads": 2,
                        "d_ff": 64},
                       {"name": "text", "context": 32, "max_bytes": 60_000},
                       {"name": "adamw", "lr": 3e-3}),
}
PRECISIONS = ("fp32", "bf16")

# every registered algorithm, with parameters that make one epoch exercise it (a round of
# averaging, a distillation, a server ...); a new algorithm must be added here
ALGORITHM_PARAMS = {
    "sync_sgd": {},
    "local_sgd": {"period": 4},
    # the paper's outer momentum 0.9 over only 7 outer steps leaves BatchNorm statistics stale
    # after the extrapolated last step (test loss up, training loss down; docs/compression.md)
    "diloco": {"period": 4, "outer_optimizer": {"name": "sgd", "lr": 0.7, "momentum": 0.5,
                                                "nesterov": True}},
    "streaming_diloco": {"period": 4, "fragments": 2, "overlap_steps": 1, "mixing": 0.5,
                         "outer_optimizer": {"name": "sgd", "lr": 0.7, "momentum": 0.5,
                                             "nesterov": True}},
    "ps": {"servers": 1},
    "gossip": {"graph": "ring"},
    "admm": {"local_steps": 2},
    "admm_async": {"servers": 1, "local_steps": 2},
    "ensemble": {},
    "ensemble_compression": {"every": 1},
    "hogwild": {},
    "feature_split": {},
    "tensor_parallel": {},
    "pipeline": {"microbatches": 2},
    "cocoa": {},
}


def cell_config(algorithm: str, model: str, precision: str) -> dict:
    spec, source, optim = MODELS[model]
    return {"name": f"{algorithm}-{model}-{precision}", "seed": 0, "workers": 2,
            "data": {"source": source, "batch_size": 32},
            "model": spec, "optim": optim,
            "algorithm": {"name": algorithm, **ALGORITHM_PARAMS[algorithm]},
            "comm": {"timeout_s": 60},
            "train": {"epochs": 1, "eval_every": 0, "progress": False, "precision": precision}}


CELLS = [(a, m, p) for a in sorted(ALGORITHM_PARAMS) for m in MODELS for p in PRECISIONS]


def plan_cell(algorithm: str, model: str, precision: str) -> tuple[dict | None, str | None]:
    """The resolved plan, or the one-line reason the cell is refused before any process starts."""
    try:
        return distml.plan(cell_config(algorithm, model, precision)), None
    except UserError as e:
        return None, str(e)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict:
    """Plan every cell; train the accepted ones, grouped into one world per launch size."""
    root = tmp_path_factory.mktemp("matrix")
    outcome, worlds = {}, {}
    for cell in CELLS:
        plan, reason = plan_cell(*cell)
        outcome[cell] = {"reason": reason, "out": root / "-".join(cell)}
        if plan is not None:
            worlds.setdefault(plan["processes"], []).append(cell)
    commands = {}
    for processes, cells in sorted(worlds.items()):
        listing = root / f"cells-{processes}.json"
        listing.write_text(json.dumps([{"config": cell_config(*c), "out": str(outcome[c]["out"])}
                                       for c in cells]))
        commands[processes] = [sys.executable, "-m", "distml", "launch", "-n", str(processes),
                               str(HERE / "matrix_world.py"), str(listing)]
    # the worlds side by side: a cell's processes wait on each other much of the time
    for processes, (code, _, err, _) in side_by_side(commands, deadline_s=600).items():
        for c in worlds[processes]:
            outcome[c]["world_rc"] = code
            outcome[c]["world_stderr"] = err[-2000:]
    return outcome


def test_every_registered_algorithm_is_in_the_matrix():
    assert set(ALGORITHMS.names()) <= set(ALGORITHM_PARAMS), (
        f"add {set(ALGORITHMS.names()) - set(ALGORITHM_PARAMS)} to ALGORITHM_PARAMS")


def _buffers_follow_policy(policy: str, saved: dict, ranks: list[dict]) -> list[str]:
    """Names of the saved buffers that break ``policy`` against the ranks' own buffers.

    ``average``: the mean of the workers' buffers; ``rank0`` and ``shared`` (one model in
    shared memory): rank 0's; ``members``: member k's are rank k's; ``owner`` (model
    parallel): each equals the copy of the rank that holds its layer.
    """
    bad = []
    for name, value in saved.items():
        if not value.is_floating_point():
            continue                          # num_batches_tracked: a count, no policy
        if policy == "members":
            _, k, local = name.split(".", 2)
            candidates = [ranks[int(k)][local]]
        elif policy == "average":
            candidates = [torch.stack([r[name] for r in ranks]).mean(0)]
        elif policy in ("rank0", "shared"):
            candidates = [ranks[0][name]]
        elif policy == "owner":
            candidates = [r[name] for r in ranks]
        else:
            raise AssertionError(f"no check written for buffer policy {policy!r}")
        if not any(torch.allclose(value, c, rtol=1e-5, atol=1e-6) for c in candidates):
            bad.append(name)
    return bad


@pytest.mark.multiprocess
@pytest.mark.timeout(900)
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: "-".join(c))
def test_cell_trains_or_is_refused(cell, matrix):
    result = matrix[cell]
    if result["reason"] is not None:
        reason = result["reason"]
        assert "\n" not in reason and len(reason) > 20, f"refusal is not one clear line: {reason!r}"
        return
    out: Path = result["out"]
    errors = sorted(out.glob("error-rank*.txt"))
    assert not errors, "\n".join(f"{e.name}: {e.read_text()[-1500:]}" for e in errors)
    summary_file = out / "summary.json"
    assert summary_file.exists(), (f"cell did not finish (world exit {result['world_rc']}): "
                                   f"{result['world_stderr']}")
    summary = json.loads(summary_file.read_text())
    first = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    assert math.isfinite(summary["test_loss"]) and summary["test_loss"] < first["test_loss"], (
        f"loss did not go down: {first['test_loss']} -> {summary['test_loss']}")

    algorithm = ALGORITHMS.build({"name": cell[0], **ALGORITHM_PARAMS[cell[0]]})
    saved = torch.load(out / "model.pt", weights_only=True)
    saved_buffers = {k: v for k, v in saved.items() if "running_" in k}
    if saved_buffers:
        ranks = [torch.load(f, weights_only=True) for f in sorted(out.glob("rank*_buffers.pt"))]
        bad = _buffers_follow_policy(algorithm.buffers, saved_buffers, ranks)
        assert not bad, f"buffers {bad} break the declared policy {algorithm.buffers!r}"
        means = [v for k, v in saved_buffers.items() if k.endswith("running_mean")]
        assert any(bool((m != 0).any()) for m in means), "BatchNorm statistics never updated"

    from distml.runtime.evaluate_run import evaluate_run
    again = evaluate_run(out)
    assert again["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-4, abs=1e-6)
    if summary.get("test_accuracy") is not None:
        assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)


def markdown_table() -> str:
    """The matrix as docs/models.md shows it: ✓ trains, ✗ refused (with the reason)."""
    lines = ["| algorithm | " + " | ".join(f"{m} {p}" for m in MODELS for p in PRECISIONS) + " |",
             "|---|" + "---|" * (len(MODELS) * len(PRECISIONS))]
    reasons: dict[str, int] = {}
    for a in sorted(ALGORITHM_PARAMS):
        row = []
        for m in MODELS:
            for p in PRECISIONS:
                _, reason = plan_cell(a, m, p)
                if reason is None:
                    row.append("✓")
                else:
                    n = reasons.setdefault(reason, len(reasons) + 1)
                    row.append(f"✗ [{n}]")
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"[{n}] {reason}" + "  " for reason, n in reasons.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
