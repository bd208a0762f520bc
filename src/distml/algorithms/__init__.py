"""Algorithms: how workers cooperate. One file per algorithm, found through ``ALGORITHMS``."""

from distml.registry import Registry

ALGORITHMS = Registry("algorithm")

from distml.algorithms.base import Algorithm  # noqa: E402
from distml.algorithms import sync_sgd  # noqa: E402,F401  (registers itself)

__all__ = ["ALGORITHMS", "Algorithm"]
