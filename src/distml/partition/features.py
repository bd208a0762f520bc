"""Dimension partition: contiguous feature-column blocks for model-parallel linear models.

When to use it: the feature dimension (or the optimizer) rather than the sample count
is the bottleneck — d too large for one worker's memory, or a dual / coordinate method
(SDCA, CoCoA, coordinate descent) that works on blocks of coordinates. Sample
partitions suit the usual case of many samples and a model that fits on every worker.
"""

from __future__ import annotations

from distml.errors import ConfigError


class FeatureSplit:
    """Split ``d`` feature columns into ``world`` contiguous blocks whose sizes differ by at most 1.

    Args:
        d: the number of features.
        world: the number of workers (each gets at least one column).
        balance: "even" (the only scheme: the first ``d % world`` blocks get one extra column).

    Raises:
        ConfigError: ``world`` < 1, ``d`` < ``world``, or an unknown ``balance``.
    """

    def __init__(self, d: int, world: int, balance: str = "even"):
        if balance != "even":
            raise ConfigError(f"balance must be 'even', got {balance!r}")
        if world < 1:
            raise ConfigError(f"world must be >= 1, got {world}")
        if d < world:
            raise ConfigError(f"{d} feature columns cannot be split over {world} workers: "
                              "use at most as many workers as features")
        self.d, self.world, self.balance = d, world, balance
        base, extra = divmod(d, world)
        self.sizes = [base + (r < extra) for r in range(world)]
        self.starts = [r * base + min(r, extra) for r in range(world)]

    def columns(self, rank: int) -> slice:
        """The columns of rank ``rank`` as a slice.

        Raises:
            ConfigError: ``rank`` outside ``[0, world)``.
        """
        if not 0 <= rank < self.world:
            raise ConfigError(f"rank must be in [0, {self.world - 1}], got {rank}")
        return slice(self.starts[rank], self.starts[rank] + self.sizes[rank])
