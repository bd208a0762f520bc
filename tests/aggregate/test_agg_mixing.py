"""Topologies, Metropolis–Hastings weights and gossip averaging, with 16 simulated nodes."""

import math

import numpy as np
import pytest
import torch

from distml.aggregate.mixing import choco_step, consensus_distance, mix_all, mix_step
from distml.comm.topology import (GRAPHS, build_graph, metropolis_hastings, second_eigenvalue)
from distml.errors import ConfigError


N = 16
ROUNDS = 300
GRAPH_SPECS = ["ring", "torus", "complete", "exponential", {"name": "random", "degree": 3, "seed": 2}]


def _name(spec):
    return spec if isinstance(spec, str) else spec["name"]


@pytest.mark.parametrize("spec", GRAPH_SPECS, ids=_name)
def test_mixing_matrices_are_doubly_stochastic(spec):
    g = build_graph(spec, N)
    for k in range(g.period()):
        w = g.matrix(k)
        assert (w >= 0).all()
        assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
        for i in range(N):     # who i receives from and who receives from i agree with W
            assert set(g.receives_from(i, k)) == {j for j in range(N) if j != i and w[i, j] > 0}
            assert all(i in g.receives_from(j, k) for j in g.sends_to(i, k))


def test_known_spectra():
    # ring with weights 1/3: eigenvalues (1 + 2 cos(2πk/n))/3
    assert second_eigenvalue(build_graph("ring", N).matrix()) == pytest.approx(
        (1 + 2 * math.cos(2 * math.pi / N)) / 3, abs=1e-12)
    assert second_eigenvalue(build_graph("complete", N).matrix()) == pytest.approx(0, abs=1e-12)
    t = build_graph("torus", N)
    assert (t.rows, t.cols) == (4, 4)
    # 4x4 torus, weights 1/5: 1/5 (1 + 2cos(2πa/4) + 2cos(2πb/4)); the second is 3/5
    assert second_eigenvalue(t.matrix()) == pytest.approx(3 / 5, abs=1e-12)
    rates = {s: build_graph(s, N).rate() for s in ("ring", "torus", "complete")}
    assert rates["complete"] < rates["torus"] < rates["ring"] < 1


@pytest.mark.parametrize("spec", GRAPH_SPECS, ids=_name)
def test_gossip_without_gradients_reaches_the_initial_mean_at_the_predicted_rate(spec):
    g = build_graph(spec, N)
    x = torch.randn(N, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean0, d0 = x.mean(0), consensus_distance(x)
    d = d0
    for k in range(ROUNDS):
        w = g.matrix(k)
        x = mix_all(x, torch.from_numpy(w))
        # one round shrinks the spread at least by ‖W − J‖₂ (time-varying: that round's W)
        bound = second_eigenvalue(w) * d
        d = consensus_distance(x)
        assert d <= bound * (1 + 1e-9) + 1e-12
        assert torch.allclose(x.mean(0), mean0, atol=1e-12)      # the mean is preserved
        if not g.static and k + 1 == g.period():
            # one-peer exponential: exact averaging after log2(n) rounds (Ying et al. 2021)
            assert d < 1e-12
    assert d <= g.rate() ** ROUNDS * d0 * (1 + 1e-6) + 1e-12
    assert torch.allclose(x, mean0.expand_as(x), atol=1e-4)


def test_worker_mix_step_equals_the_matrix_row():
    g = build_graph("torus", N)
    x = torch.randn(N, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = mix_all(x, torch.from_numpy(g.matrix()))
    for i in range(N):
        nb = g.receives_from(i)
        got = mix_step(x[i], float(g.matrix()[i, i]), {j: x[j] for j in nb}, nb)
        assert torch.allclose(got, full[i])
    with pytest.raises(ValueError, match="sum to 1"):
        mix_step(x[0], 0.9, {1: x[1]}, {1: 0.5})


def test_metropolis_hastings_on_an_irregular_graph():
    # a star: the hub has degree 3, the leaves 1 → leaf-hub weight 1/(1+3)
    a = np.zeros((4, 4), dtype=bool)
    a[0, 1:] = a[1:, 0] = True
    w = metropolis_hastings(a)
    assert np.allclose(w, w.T) and np.allclose(w.sum(1), 1)
    assert w[0, 1] == pytest.approx(0.25) and w[1, 1] == pytest.approx(0.75)
    assert w[0, 0] == pytest.approx(0.25)


def test_graph_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="ring"):
        build_graph("hypercube", 8)
    with pytest.raises(ConfigError, match="rows must divide"):
        build_graph({"name": "torus", "rows": 3}, 8)
    with pytest.raises(ConfigError, match="degree"):
        build_graph({"name": "random", "degree": 3}, 5)     # n·degree odd
    assert set(GRAPHS.names()) == {"ring", "torus", "complete", "exponential", "random"}


def _choco_rounds(x, graph, codec, gamma, rounds):
    """CHOCO-Gossip for all workers in one process; public copies start at 0 (the paper)."""
    n = x.shape[0]
    hat = torch.zeros_like(x)
    for _ in range(rounds):
        for i in range(n):      # each worker's message, added by every holder of x̂_i
            payload, _ = codec.compress(x[i] - hat[i], None)
            hat[i] += codec.decompress(payload, x[i])
        x = torch.stack([choco_step(x[i], hat[i], {j: hat[j] for j in graph.receives_from(i)},
                                    graph.receives_from(i), gamma) for i in range(n)])
    return x


def test_choco_gossip_keeps_the_mean_and_reaches_consensus_with_topk():
    from distml.comm.compress.topk import TopK
    x0 = torch.randn(N, 200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = build_graph("ring", N)
    x = _choco_rounds(x0, g, TopK(0.1), gamma=0.2, rounds=300)
    assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-12)
    assert consensus_distance(x) < 0.05 * consensus_distance(x0)     # measured: 0.016
    # an exact codec and gamma = 1: after the first round (copies exact) it is plain W x
    exact = _choco_rounds(x0, g, TopK(1.0), gamma=1.0, rounds=3)
    w = torch.from_numpy(g.matrix())
    assert torch.allclose(exact, mix_all(mix_all(mix_all(x0, w), w), w), atol=1e-12)
    with pytest.raises(ValueError, match="gamma must be in"):
        choco_step(x0[0], x0[0], {}, {}, 1.5)
