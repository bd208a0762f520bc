"""Algorithms: how workers cooperate. One file per algorithm, found through ``ALGORITHMS``."""

from distml.registry import Registry

ALGORITHMS = Registry("algorithm")

from distml.algorithms.base import Algorithm  # noqa: E402
from distml.algorithms import sync_sgd  # noqa: E402,F401  (registers itself)
from distml.algorithms import local_sgd  # noqa: E402,F401  (issue 4: local SGD)
from distml.algorithms import cocoa, feature_split, hogwild, pipeline, tensor_parallel  # noqa: E402,F401,E501  (issue 6)
from distml.algorithms import ps  # noqa: E402,F401  (issue 3: parameter server)
from distml.algorithms import admm, ensemble, ensemble_compression, gossip  # noqa: E402,F401  (issue 5)
from distml.algorithms import admm_async  # noqa: E402,F401  (issue 5: on the parameter server)

__all__ = ["ALGORITHMS", "Algorithm"]
