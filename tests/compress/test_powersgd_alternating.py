"""PowerSGD's "alternating" scheme (epfml/powersgd), single process over a counting transport."""

import pytest
import torch

from distml.comm.compress import CODECS


class Counting:
    """A transport of world 1 that counts the bytes handed to all_reduce."""

    rank, world_size = 0, 1

    def __init__(self):
        self.sent = []

    def all_reduce(self, x, op="sum", async_op=False):
        self.sent.append(x.numel() * x.element_size())


SHAPES = [torch.Size([30, 20]), torch.Size([30]), torch.Size([8, 30])]


def _flat(seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for s in SHAPES:
        if len(s) == 2 and rank is not None:     # a matrix of rank ≤ `rank`
            parts.append(torch.randn(s[0], rank, generator=g, dtype=torch.float64)
                         @ torch.randn(rank, s[1], generator=g, dtype=torch.float64))
        else:
            parts.append(torch.randn(s, generator=g, dtype=torch.float64))
    return torch.cat([p.reshape(-1) for p in parts])


def _psgd(**kw):
    return CODECS.build({"name": "powersgd", "rank": 2, "scheme": "alternating", **kw}, seed=1)


def test_one_iteration_sends_p_or_q_in_turn():
    codec, t = _psgd(), Counting()
    x = _flat(0)
    st = codec.init(x, SHAPES)
    for _ in range(4):
        _, st = codec.reduce(x, st, t)
    vec = 30 * 8                                   # the bias, all-reduced every round
    q, p = (20 + 30) * 2 * 8, (30 + 8) * 2 * 8     # Q (right factors), P (left factors)
    assert t.sent == [vec, q, vec, p, vec, q, vec, p]
    assert codec.describe() == "powersgd(rank 2, alternating ×1)"


def test_two_iterations_send_both_factors_like_torchs_scheme():
    x = _flat(0)
    sent = {}
    for kw in ({"iters_per_step": 2}, {"scheme": "torch"}):
        codec, t = CODECS.build({"name": "powersgd", "rank": 2, "scheme": "alternating", **kw}), Counting()
        st = codec.init(x, SHAPES)
        for _ in range(3):
            _, st = codec.reduce(x, st, t)
        sent[str(kw)] = sum(t.sent)
    assert len(set(sent.values())) == 1


@pytest.mark.parametrize("iters", [1, 2])
def test_warm_start_recovers_a_low_rank_gradient_and_error_feedback_is_exact(iters):
    x = _flat(3, rank=2)
    codec = _psgd(iters_per_step=iters, error_feedback=False)
    st = codec.init(x, SHAPES)
    for _ in range(6):
        out, st = codec.reduce(x, st, Counting())
    torch.testing.assert_close(out, x, rtol=1e-8, atol=1e-8)       # power iteration converged
    codec = _psgd(iters_per_step=iters)
    y = _flat(4)                                                    # full rank: EF keeps the rest
    st = codec.init(y, SHAPES)
    total = torch.zeros_like(y)
    for _ in range(5):
        out, st = codec.reduce(y, st, Counting())
        total += out
    torch.testing.assert_close(total + st["error"], 5 * y)


def test_alternating_validates_its_parameters():
    with pytest.raises(ValueError, match="scheme must be 'torch' or 'alternating', got 'x'"):
        CODECS.get("powersgd")(scheme="x")
    with pytest.raises(ValueError, match=r"iters_per_step must be >= 1 \(and 1 with scheme 'torch'\)"):
        CODECS.get("powersgd")(iters_per_step=2)
    with pytest.raises(ValueError, match="needs warm_start"):
        CODECS.get("powersgd")(scheme="alternating", warm_start=False)
