"""Streaming DiLoCo (Douillard et al. 2025) against DiLoCo and against the paper's update.

One 2-rank world (``streaming_world.py``, float64, inner AdamW through ``distml.wrap``)
trains DiLoCo, Streaming DiLoCo with F = 1, τ = 0, α = 0 (must be DiLoCo exactly), with
F = 2, τ = 1, α = 0.5 (compared below with the paper's update written out plainly: one
anchor and one outer Nesterov momentum per fragment, staggered schedules, the α merge τ
steps after sending), and with every codec on the pseudo-gradient.
"""

import json
from pathlib import Path

import pytest
import torch

import streaming_world as W
from procs import distml
from distml.algorithms import ALGORITHMS
from distml.algorithms.local_sgd import DILOCO_OUTER
from distml.config import load_config
from distml.errors import ConfigError
from distml.runtime.build import make_plan

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("streaming") / "out"
    res = distml("launch", "-n", "2", str(HERE / "streaming_world.py"), str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]


def streaming_reference(period: int, tau: int, alpha: float, steps: int) -> list[torch.Tensor]:
    """The paper's Algorithm (F = 2) on two models, one AdamW each, in one process."""
    groups = [[0], [1, 2, 3]]          # the model's tensors hold 30, 5, 15, 3 entries: 30 | 23
    offsets = [0, period // 2]         # fragment p every H steps, at offset p·H/F
    lr, mu = DILOCO_OUTER["lr"], DILOCO_OUTER["momentum"]
    models = [W.make_model() for _ in range(2)]
    opts = [torch.optim.AdamW(m.parameters(), lr=W.INNER_LR) for m in models]
    data = [W.batches(r, steps) for r in range(2)]

    def frag(m, p):
        return torch.cat([list(m.parameters())[i].detach().reshape(-1) for i in groups[p]])

    def put(m, p, x):
        torch.nn.utils.vector_to_parameters(x, [list(m.parameters())[i] for i in groups[p]])

    anchor, velocity, pending = [frag(models[0], p) for p in range(2)], [None, None], {}

    def outer_step(p):                 # Nesterov SGD on g = anchor − mean θ (torch's form)
        g = anchor[p] - (frag(models[0], p) + frag(models[1], p)) / 2
        velocity[p] = g.clone() if velocity[p] is None else mu * velocity[p] + g
        anchor[p] = anchor[p] - lr * (g + mu * velocity[p])
        return anchor[p]

    def mix(p, global_p):
        for m in models:
            put(m, p, alpha * frag(m, p) + (1 - alpha) * global_p)

    sync_steps = [{o + k * period for k in range(steps)} - {0} for o in offsets]
    for t in range(1, steps + 1):
        for m, opt, (x, y) in zip(models, opts, (d[t - 1] for d in data)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
        for p in [p for p, (at, _) in pending.items() if at == t]:
            mix(p, pending.pop(p)[1])
        for p in range(2):
            if t in sync_steps[p]:     # the deltas are taken now; the merge comes τ steps later
                pending[p] = (t + tau, outer_step(p))
    for p, (_, global_p) in pending.items():     # what is in flight at the end lands ...
        mix(p, global_p)
    for p in range(2):                 # ... and a last averaging gives every rank one model
        global_p = outer_step(p)
        for m in models:
            put(m, p, global_p)
    return [p.detach().reshape(-1) for p in models[0].parameters()]


def _params(case):
    return [torch.tensor(p, dtype=torch.float64) for p in case["params"]]


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_one_fragment_without_overlap_is_diloco(world):
    for r in world:
        assert r["streaming_f1"]["params"] == r["diloco"]["params"]
        assert r["streaming_f1"]["syncs"] == r["diloco"]["syncs"] == 4   # 3, 6, 9 and the end
    assert world[0]["diloco"]["params"] == world[1]["diloco"]["params"]


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_two_fragments_with_overlap_and_mixing_follow_the_paper(world):
    spec = W.STREAMING_F2
    want = streaming_reference(spec["period"], spec["overlap_steps"], spec["mixing"], W.STEPS)
    for r in world:
        got = _params(r["streaming_f2"])
        worst = max((a - b).abs().max().item() for a, b in zip(got, want))
        assert worst <= 1e-9, worst
        # fragment 1 after 2, 6, 10 steps, fragment 0 after 4, 8; the last averaging
        assert r["streaming_f2"]["syncs"] == 6
    assert world[0]["streaming_f2"]["params"] != world[0]["diloco"]["params"]


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_resuming_from_state_dict_is_exact(world):
    """Anchors, per-fragment outer momenta and codec state survive a save and a load."""
    for r in world:
        assert r["streaming_f2_resumed"]["params"] == r["streaming_f2"]["params"]


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_peak_bytes_per_synchronization_is_the_largest_fragment(world):
    for r in world:
        assert r["diloco"]["peak_sync_bytes"] == 53 * 8            # the whole model, float64
        assert r["streaming_f2"]["peak_sync_bytes"] == 30 * 8      # its largest fragment
        assert r["codec:streaming:0"]["peak_sync_bytes"] == 30 * 2  # ... in fp16


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_every_codec_compresses_the_pseudo_gradient_and_training_converges(world):
    r0, r1 = world
    for name, i in W.CODEC_RUNS:
        key = f"codec:{name}:{i}"
        assert r0[key]["params"] == r1[key]["params"], key          # one model on every rank
        assert r0[key]["loss"] < 0.5 * r0[key]["start_loss"], (key, r0[key])
        full = 53 * 8 if name == "diloco" else 30 * 8
        assert r0[key]["peak_sync_bytes"] < full, key               # compressed on the wire
    # SparseLoCo on DiLoCo: top-k 20 % of 53 entries (11 int32 indices) and 2-bit values + a scale
    assert r0["codec:diloco:7"]["peak_sync_bytes"] == 11 * 4 + 3 + 4


@pytest.mark.parametrize("kwargs,message", [
    ({"fragments": 0}, "fragments must be >= 1"),
    ({"period": 8, "fragments": 4, "overlap_steps": 2}, r"overlap_steps must be in \[0, period / fragments = 2\)"),
    ({"mixing": 1.5}, r"mixing must be in \[0, 1\]"),
    ({"mixing": -0.1}, r"mixing must be in \[0, 1\]"),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ALGORITHMS.build({"name": "streaming_diloco", **kwargs})


def test_more_fragments_than_tensors_is_refused_before_any_process_starts():
    source = {"name": "synthetic", "kind": "logistic_regression", "n_train": 64, "n_test": 16,
              "dim": 4}
    base = {"workers": 2, "data": {"source": source, "batch_size": 8},
            "model": {"name": "softmax"}, "train": {"epochs": 1},
            "algorithm": {"name": "streaming_diloco", "period": 6, "fragments": 3}}
    with pytest.raises(ConfigError, match="2 trainable parameter tensors and cannot make 3 "
                                          "fragments; use fragments <= 2"):
        make_plan(load_config(base=base))
    base["algorithm"]["fragments"] = 2
    plan = make_plan(load_config(base=base))["algorithm"]
    assert plan["algorithm"] == "streaming_diloco" and len(plan["fragment_sizes"]) == 2
