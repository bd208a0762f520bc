"""Decentralized graphs and their mixing matrices (ring, 2-D torus, complete, exponential, random).

A :class:`Graph` answers, for every communication round, the doubly stochastic mixing
matrix ``W`` (``W_ij > 0``: worker i takes j's model with weight ``W_ij``). Static graphs
use Metropolis–Hastings weights ``W_ij = 1/(1 + max(d_i, d_j))`` (Xiao & Boyd 2004), which
are symmetric and doubly stochastic for any undirected graph, so gossip preserves the
mean of the replicas. The one-peer exponential graph changes every round (Assran et al.
2019, SGP; Ying et al. 2021): worker i sends to ``i + 2^(k mod log2 n)`` and mixes
half-half, which averages exactly after ``log2 n`` rounds when n is a power of two.
"""

from __future__ import annotations

import math

import numpy as np

from distml.registry import Registry

GRAPHS = Registry("graph")


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights of an undirected graph (Xiao & Boyd 2004).

    Args:
        adjacency: (n, n) symmetric 0/1 matrix without self-loops.

    Returns:
        (n, n) symmetric doubly stochastic matrix.

    Raises:
        ValueError: the matrix is not square and symmetric.
    """
    a = np.asarray(adjacency, dtype=bool)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not (a == a.T).all():
        raise ValueError("adjacency must be a square symmetric matrix")
    np.fill_diagonal(a, False)
    deg = a.sum(axis=1)
    w = np.where(a, 1.0 / (1.0 + np.maximum.outer(deg, deg)), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def second_eigenvalue(w: np.ndarray) -> float:
    """``‖W − 11ᵀ/n‖₂``: the factor by which one mixing round at least shrinks the spread.

    For a symmetric W this is the second largest eigenvalue modulus; for any doubly
    stochastic W, ``‖(W − J)(X − JX)‖_F ≤ λ·‖X − JX‖_F`` with this λ.
    """
    w = np.asarray(w, dtype=np.float64)
    n = w.shape[0]
    return float(np.linalg.norm(w - np.full((n, n), 1.0 / n), ord=2))


class Graph:
    """A communication graph over ``n`` workers: the mixing matrix of every round.

    Subclasses set :attr:`static` and implement :meth:`matrix`.
    """

    static = True

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"a graph needs n >= 1 workers, got {n!r}")
        self.n = n

    def matrix(self, round_: int = 0) -> np.ndarray:
        raise NotImplementedError

    def period(self) -> int:
        """Rounds after which the sequence of matrices repeats (1 for a static graph)."""
        return 1

    def receives_from(self, rank: int, round_: int = 0) -> dict[int, float]:
        """``{j: W_ij}`` for j ≠ rank with ``W_ij > 0``: whose models ``rank`` mixes in."""
        row = self.matrix(round_)[rank]
        return {j: float(row[j]) for j in range(self.n) if j != rank and row[j] > 0}

    def sends_to(self, rank: int, round_: int = 0) -> list[int]:
        """The workers j ≠ rank with ``W_j,rank > 0``: who needs ``rank``'s model."""
        col = self.matrix(round_)[:, rank]
        return [j for j in range(self.n) if j != rank and col[j] > 0]

    def rate(self) -> float:
        """Per-round contraction of the spread, over one period: ``λ(W_p···W_1)^(1/p)``."""
        prod = np.eye(self.n)
        for k in range(self.period()):
            prod = self.matrix(k) @ prod
        return second_eigenvalue(prod) ** (1.0 / self.period())


class _Static(Graph):
    def __init__(self, n: int, adjacency: np.ndarray):
        super().__init__(n)
        self._w = metropolis_hastings(adjacency)

    def matrix(self, round_: int = 0) -> np.ndarray:
        return self._w


@GRAPHS.register("ring", summary="each worker talks to its two ring neighbours")
class Ring(_Static):
    """Ring: i ↔ i±1 (mod n); Metropolis–Hastings weights 1/3 (n ≥ 3)."""

    def __init__(self, n: int):
        a = np.zeros((n, n), dtype=bool)
        for i in range(n):
            for j in ((i + 1) % n, (i - 1) % n):
                if j != i:
                    a[i, j] = a[j, i] = True
        super().__init__(n, a)


@GRAPHS.register("torus", summary="2-D torus: four neighbours on a rows × cols grid with wrap-around")
class Torus(_Static):
    """2-D torus of ``rows × cols = n`` (rows defaults to the largest divisor ≤ √n).

    Raises:
        ValueError: rows does not divide n.
    """

    def __init__(self, n: int, rows: int | None = None):
        if rows is None:
            rows = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
        if not isinstance(rows, int) or rows < 1 or n % rows:
            raise ValueError(f"torus rows must divide the {n} workers, got {rows!r}")
        cols = n // rows
        a = np.zeros((n, n), dtype=bool)
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                for j in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
                    if j != i:
                        a[i, j] = a[j, i] = True
        super().__init__(n, a)
        self.rows, self.cols = rows, cols


@GRAPHS.register("complete", summary="everyone talks to everyone: exact averaging every round")
class Complete(_Static):
    """Complete graph: Metropolis–Hastings gives ``W = 11ᵀ/n`` (exact averaging)."""

    def __init__(self, n: int):
        super().__init__(n, ~np.eye(n, dtype=bool))


@GRAPHS.register("random", summary="random d-regular graph (connected), fixed by a seed")
class RandomRegular(_Static):
    """A connected random ``degree``-regular graph, drawn by the pairing model with retries.

    Args:
        n: workers.
        degree: neighbours per worker, in [1, n−1] with ``n·degree`` even.
        seed: fixes the graph (every rank builds the same one).

    Raises:
        ValueError: no such graph, or none connected found in 1000 draws.
    """

    def __init__(self, n: int, degree: int = 3, seed: int = 0):
        if not isinstance(degree, int) or not 1 <= degree <= max(n - 1, 1) or (n * degree) % 2:
            raise ValueError(f"degree must be in [1, {n - 1}] with n·degree even, got {degree!r}")
        rng = np.random.default_rng(seed)
        for _ in range(1000):
            a = _pairing(n, degree, rng)
            if a is not None and (n == 1 or second_eigenvalue(metropolis_hastings(a)) < 1 - 1e-9):
                super().__init__(n, a)
                self.degree = degree
                return
        raise ValueError(f"no connected {degree}-regular graph on {n} workers found; change degree")


def _pairing(n: int, d: int, rng: np.random.Generator) -> np.ndarray | None:
    stubs = rng.permutation(np.repeat(np.arange(n), d)).reshape(-1, 2)
    a = np.zeros((n, n), dtype=bool)
    for i, j in stubs:
        if i == j or a[i, j]:
            return None            # a self-loop or a double edge: draw again
        a[i, j] = a[j, i] = True
    return a


@GRAPHS.register("exponential", summary="one-peer exponential graph: one partner per round, "
                 "2^k apart (time-varying)")
class OnePeerExponential(Graph):
    """Round k: worker i sends to ``i + 2^(k mod τ)`` and keeps ``(x_i + x_{i−2^k})/2``, τ = ⌈log2 n⌉."""

    static = False

    def __init__(self, n: int):
        super().__init__(n)
        self.tau = max(1, math.ceil(math.log2(n))) if n > 1 else 1

    def period(self) -> int:
        return self.tau

    def matrix(self, round_: int = 0) -> np.ndarray:
        if self.n == 1:
            return np.ones((1, 1))
        hop = 2 ** (round_ % self.tau)
        w = np.eye(self.n) * 0.5
        for i in range(self.n):
            w[i, (i - hop) % self.n] += 0.5
        return w


def build_graph(spec, workers: int) -> Graph:
    """Build the graph a spec names (``"ring"`` or ``{name = "torus", rows = 2}``) for ``workers``."""
    return GRAPHS.build(spec, n=workers)
