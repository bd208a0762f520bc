"""Consensus-ADMM math (one process): the updates solve their subproblems, and the whole
iteration reaches the closed-form ridge-regression optimum; weighted and partial means."""

import pytest
import torch

from distml.aggregate.admm import (admm_residuals, balance_rho, dual_update, penalty_mask,
                                   z_update)
from distml.aggregate.mean import partial_mean, weighted_mean


G = torch.Generator().manual_seed(0)


def test_z_update_minimizes_its_objective():
    n_workers, d, rho, l2 = 3, 6, 0.7, 0.3
    xs = torch.randn(n_workers, d, generator=G, dtype=torch.float64)
    us = torch.randn(n_workers, d, generator=G, dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float64)
    z = z_update((xs + us).mean(0), rho, l2, mask).requires_grad_(True)
    obj = 0.5 * l2 * (mask * z).pow(2).sum() + 0.5 * rho * (xs + us - z).pow(2).sum(1).mean()
    (grad,) = torch.autograd.grad(obj, z)
    assert grad.abs().max() < 1e-12
    # no L2: the plain mean
    assert torch.equal(z_update((xs + us).mean(0), rho), (xs + us).mean(0))


def test_penalty_mask_skips_biases():
    m = penalty_mask([("linear.weight", 4), ("linear.bias", 2)])
    assert m.tolist() == [1, 1, 1, 1, 0, 0]
    assert penalty_mask([("b.bias", 2)], penalize_bias=True).tolist() == [1, 1]


def test_residuals_and_balancing():
    z, z_prev = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    r, s = admm_residuals(9.0, z, z_prev, rho=0.5, workers=4)
    assert r == pytest.approx(3.0) and s == pytest.approx(0.5 * 2 * 2)
    assert balance_rho(1.0, primal=100, dual=1) == 2.0
    assert balance_rho(1.0, primal=1, dual=100) == 0.5
    assert balance_rho(1.0, primal=5, dual=1) == 1.0
    with pytest.raises(ValueError, match="mu and tau must be > 1"):
        balance_rho(1.0, 1, 1, mu=1)
    with pytest.raises(ValueError, match="rho must be > 0"):
        z_update(z, rho=0)


def test_consensus_admm_reaches_the_ridge_optimum():
    """Boyd et al. §8.2-style data split: 4 workers, each with its own rows of a least-squares
    problem; exact local solves + z/u updates (with residual balancing) reach the optimum."""
    workers, n_each, d, l2 = 4, 25, 5, 0.1
    a = [torch.randn(n_each, d, generator=G, dtype=torch.float64) for _ in range(workers)]
    b = [torch.randn(n_each, generator=G, dtype=torch.float64) for _ in range(workers)]
    # objective (1/N) Σ_i (1/2n)‖A_i x − b_i‖² + l2/2 ‖x‖²
    A, B = torch.cat(a), torch.cat(b)
    n = len(B)
    x_star = torch.linalg.solve(A.T @ A / n + l2 * torch.eye(d, dtype=torch.float64), A.T @ B / n)
    rho = 1.0
    z = torch.zeros(d, dtype=torch.float64)
    us = [torch.zeros(d, dtype=torch.float64) for _ in range(workers)]
    for _ in range(200):
        xs = [torch.linalg.solve(ai.T @ ai / n_each + rho * torch.eye(d, dtype=torch.float64),
                                 ai.T @ bi / n_each + rho * (z - ui)) for ai, bi, ui in zip(a, b, us)]
        z_prev = z
        z = z_update(torch.stack([x + u for x, u in zip(xs, us)]).mean(0), rho, l2)
        for u, x in zip(us, xs):
            dual_update(u, x, z)
        r, s = admm_residuals(sum(float((x - z).pow(2).sum()) for x in xs), z, z_prev, rho, workers)
        new = balance_rho(rho, r, s)
        for u in us:
            u.mul_(rho / new)
        rho = new
    assert torch.allclose(z, x_star, atol=1e-9), (z - x_star).abs().max()
    assert r < 1e-9 and s < 1e-9


def test_weighted_and_partial_means():
    xs = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 4.0]), torch.tensor([100.0, 100.0])]
    assert torch.equal(weighted_mean(xs[:2]), torch.tensor([2.0, 2.0]))
    assert torch.allclose(weighted_mean(xs[:2], [3, 1]), torch.tensor([1.5, 1.0]))
    assert torch.equal(partial_mean(xs, [True, True, False]), torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="at least one arrived"):
        partial_mean(xs, [False] * 3)
    with pytest.raises(ValueError, match=">= 0 with a sum > 0"):
        weighted_mean(xs[:2], [0, 0])
