"""Aggregation: pure functions that merge workers' models or updates (no transport here).

- :mod:`~distml.aggregate.mean`: weighted and partial (first-k) means.
- :mod:`~distml.aggregate.mixing`: decentralized mixing steps and consensus distance.
- :mod:`~distml.aggregate.admm`: consensus-ADMM z/u updates, residuals, residual balancing.
- :mod:`~distml.aggregate.ensemble`: probability averaging, majority vote, the ensemble module.
- :mod:`~distml.aggregate.distill`: soft targets at a temperature and the distillation loss.

The algorithms in :mod:`distml.algorithms` move the tensors with the transport and call
these functions on what arrived, so every formula is tested in one process.
"""

from distml.aggregate.admm import (admm_residuals, balance_rho, dual_update, penalty_mask,
                                   z_update)
from distml.aggregate.distill import distillation_loss, soft_targets
from distml.aggregate.ensemble import Ensemble, accuracy, average_probabilities, majority_vote
from distml.aggregate.mean import partial_mean, weighted_mean
from distml.aggregate.mixing import (consensus_distance, consensus_distance_from_sums, mix_all,
                                     mix_step)

__all__ = ["weighted_mean", "partial_mean", "mix_step", "mix_all", "consensus_distance",
           "consensus_distance_from_sums",
           "z_update", "dual_update", "admm_residuals", "balance_rho", "penalty_mask",
           "Ensemble", "accuracy", "average_probabilities", "majority_vote", "soft_targets",
           "distillation_loss"]
