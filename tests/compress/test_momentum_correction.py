"""Momentum correction (DGC) as a codec wrapper, and sync_sgd's ``momentum_correction``.

Single process: the contract is that with a lossless codec the wrapper reproduces
momentum SGD exactly (the mean of the workers' velocities is the velocity of the mean
gradient), and that masking clears exactly the coordinates a sparsifier sent.
"""

import pytest
import torch
from torch import nn

from distml.algorithms.sync_sgd import SyncSGD
from distml.comm.compress import (Compressor, MomentumCorrection, Reducer, with_error_feedback,
                                  with_momentum_correction)
from distml.comm.compress.topk import TopK
from distml.config import load_config
from distml.errors import ConfigError
from distml.runtime.build import make_plan


class Identity(Compressor):
    """A lossless, summable codec (what a plain fp32 all-reduce sends)."""

    summable = lossless = True

    def compress(self, x, state):
        return (x.reshape(-1).clone(),), state

    def decompress(self, payload, like, state=None):
        return payload[0].to(like.dtype).reshape(like.shape)


class MeanReducer(Reducer):
    """A lossless Reducer over a world of one."""

    lossless = True

    def reduce(self, x, state, transport):
        return x.clone(), state


class Done:
    def wait(self):
        pass


class OneRank:
    """A transport of world 1 (reductions are the identity)."""

    rank, world_size = 0, 1

    def broadcast(self, x, src=0):
        pass

    def all_reduce(self, x, op="sum", async_op=False):
        return Done() if async_op else None

    def all_gather(self, x):
        return [x.clone()]


def _grads(steps, workers, n=40):
    g = torch.Generator().manual_seed(7)
    return [[torch.randn(n, generator=g, dtype=torch.float64) for _ in range(workers)]
            for _ in range(steps)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_lossless_codec_equals_momentum_sgd_over_two_workers(nesterov):
    grads = _grads(12, 2)
    ref = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=nesterov)
    w = torch.zeros(40, dtype=torch.float64)
    codecs = [with_momentum_correction(Identity(), 0.9, nesterov=nesterov) for _ in range(2)]
    states = [c.init(w) for c in codecs]
    for step in grads:
        ref.grad = sum(step) / 2
        opt.step()
        total = torch.zeros_like(w)
        for r in range(2):     # every worker compresses its own gradient; the mean is applied
            payload, states[r] = codecs[r].compress(step[r], states[r])
            total += codecs[r].decompress(payload, w, states[r])
        w -= 0.1 * total / 2   # the optimizer, without momentum
    torch.testing.assert_close(w, ref.detach(), rtol=1e-12, atol=1e-12)


def test_reducer_variant_carries_the_velocity():
    x = torch.ones(5, dtype=torch.float64)
    mc = with_momentum_correction(MeanReducer(), 0.5)
    assert isinstance(mc, Reducer)
    st = mc.init(x, [torch.Size([5])])
    outs = []
    for _ in range(3):
        out, st = mc.reduce(x, st, OneRank())
        outs.append(out[0].item())
    assert outs == [1.0, 1.5, 1.75]
    with pytest.raises(ValueError, match="masking needs a sparse Compressor"):
        with_momentum_correction(MeanReducer(), 0.5, masking=True)


def test_masking_clears_the_velocity_where_topk_sent_and_error_feedback_is_exact():
    codec = with_momentum_correction(with_error_feedback(TopK(0.1)), 0.9, masking=True)
    assert isinstance(codec, MomentumCorrection) and "masking" in codec.describe()
    x = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = codec.init(x)
    sent_total = torch.zeros_like(x)
    velocity_total = torch.zeros_like(x)
    for _ in range(5):
        u_before = state["velocity"] * 0.9 + x           # what this round's velocity will be
        payload, state = codec.compress(x, state)
        decoded = codec.decompress(payload, x, state)
        sent = decoded != 0
        assert sent.sum() == 20
        assert torch.all(state["velocity"][sent] == 0)              # masked
        assert torch.equal(state["velocity"][~sent], u_before[~sent])
        assert torch.all(state["inner"]["residual"][sent] == 0)     # EF: nothing left there
        sent_total += decoded
        velocity_total += u_before
    # error feedback: every velocity fed in was sent or still waits in the residual
    torch.testing.assert_close(sent_total + state["inner"]["residual"], velocity_total)


def test_wrapper_validates_momentum():
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\), got 1.5"):
        with_momentum_correction(TopK(0.1), 1.5)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sync_sgd_moves_momentum_and_weight_decay_into_a_lossless_codec(nesterov):
    ref, model = _mlp(), _mlp()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov,
                              weight_decay=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov,
                          weight_decay=0.01)
    alg = SyncSGD(codec=Identity(), momentum_correction=True)
    alg.setup(model, opt, OneRank())
    g = opt.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.0, False, 0.0)
    assert alg.describe()["codec"].startswith("momentum_correction(Identity, m=0.9")
    gen = torch.Generator().manual_seed(3)
    for step in range(10):
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        for m, o in ((ref, opt_ref), (model, opt)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            if m is model:
                alg.after_backward(step)
            o.step()
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert "velocity" in alg.state_dict()["codec_states"][0]


def test_sync_sgd_refuses_momentum_correction_without_what_it_needs():
    with pytest.raises(ValueError, match="apply to a codec"):
        SyncSGD(momentum_correction=True)
    with pytest.raises(ValueError, match="momentum_masking needs momentum_correction"):
        SyncSGD(codec=Identity(), momentum_masking=True)
    model = _mlp()
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1),
                torch.optim.Adam(model.parameters(), lr=0.1)):
        with pytest.raises(ValueError, match="momentum_correction needs optim"):
            SyncSGD(codec=Identity(), momentum_correction=True).setup(model, opt, OneRank())


def test_config_selects_momentum_correction():
    base = {"workers": 2, "data": {"source": {"name": "sklearn", "dataset": "digits"}},
            "model": {"name": "mlp"}, "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 1}}
    plan = make_plan(load_config(base={**base, "algorithm": {
        "name": "sync_sgd", "momentum_correction": True, "momentum_masking": True},
        "comm": {"codec": {"name": "topk", "ratio": 0.01}, "error_feedback": True}}))
    assert plan["algorithm"]["codec"] == "error_feedback(topk(0.01))"
    assert plan["algorithm"]["momentum_correction"] and plan["algorithm"]["momentum_masking"]
    with pytest.raises(ConfigError, match="apply to a codec"):
        make_plan(load_config(base={**base, "algorithm": {"name": "sync_sgd",
                                                          "momentum_correction": True}}))

