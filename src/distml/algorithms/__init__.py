"""Algorithms: how workers cooperate. One file per algorithm, found through ``ALGORITHMS``
(held by :mod:`distml.algorithms.registry`, below the algorithms)."""

from distml.algorithms import sync_sgd  # noqa: F401  (registers itself)
from distml.algorithms import local_sgd, streaming_diloco  # noqa: F401  (issues 4, 15)
from distml.algorithms import cocoa, feature_split, hogwild, pipeline, tensor_parallel  # noqa: F401  (issue 6)
from distml.algorithms import ps  # noqa: F401  (issue 3: parameter server)
from distml.algorithms import admm, ensemble, ensemble_compression, gossip  # noqa: F401  (issue 5)
from distml.algorithms import admm_async  # noqa: F401  (issue 5: on the parameter server)
from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS

__all__ = ["ALGORITHMS", "Algorithm", "Supports"]
