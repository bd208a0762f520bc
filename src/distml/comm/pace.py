"""Pace rules: when may a worker that reached clock ``c`` see the model (docs/design.md §2.4, §4).

Small pure objects, so the parameter server (and anything else that holds workers back)
decides with them and the rules are unit-tested in one process.

- **BSP** — bulk synchronous parallel (Valiant 1990): a pull at clock ``c`` waits until
  every update of clocks ``< c`` is in (``progress >= c``).
- **SSP(s)** — stale synchronous parallel (Ho et al., "More Effective Distributed ML
  via a Stale Synchronous Parallel Parameter Server", NIPS 2013): the fastest worker
  may lead the slowest by at most ``s`` clocks (``progress >= c - s``). SSP(0) = BSP.
- **ASP** — asynchronous parallel (Recht et al. 2011; Dean et al. 2012, Downpour):
  never wait.
- **Quorum(k of n)** — synchronous SGD with backup workers (Chen et al., "Revisiting
  Distributed Synchronous SGD", 2016): a round closes on the first ``k`` pushes.
- **BoundedDelay(τ)** — the partial barrier of asynchronous ADMM (Zhang & Kwok,
  "Asynchronous Distributed ADMM for Consensus Optimization", ICML 2014): with a quorum,
  a round may close without a worker only while that worker's newest applied push is
  at most ``τ`` rounds old; a late push joins the open round instead of being dropped.

``progress`` is what the server has: the number of closed rounds (synchronous rounds)
or the slowest active worker's clock (asynchronous application).
"""

from __future__ import annotations

from typing import Any

from distml.registry import Registry

PACES = Registry("pace")


class Pace:
    """Base rule. ``synchronous`` paces apply pushes per round (all of a clock at once)."""

    name = "pace"
    synchronous = False
    staleness: int | None = 0

    def ready(self, clock: int, progress: int) -> bool:
        """Whether a pull from a worker at ``clock`` may be answered given ``progress``."""
        raise NotImplementedError

    def lag(self, clock: int, progress: int) -> int:
        """The staleness a pull answered now would see: clocks the slowest is behind."""
        return max(0, clock - progress)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "staleness": self.staleness}


@PACES.register("bsp", paper="Valiant 1990", summary="wait for every worker each clock")
class BSP(Pace):
    """Bulk synchronous: answer a pull at clock ``c`` once all updates of clocks ``< c`` are in."""

    name = "bsp"
    synchronous = True

    def ready(self, clock: int, progress: int) -> bool:
        return progress >= clock


@PACES.register("ssp", paper="Ho et al. 2013", summary="the fastest leads the slowest by <= s clocks")
class SSP(Pace):
    """Stale synchronous parallel with bound ``staleness``.

    Args:
        staleness: the largest lead (in clocks) of the requester over the slowest worker.

    Raises:
        ValueError: ``staleness`` is negative.
    """

    name = "ssp"

    def __init__(self, staleness: int = 2):
        if int(staleness) != staleness or staleness < 0:
            raise ValueError(f"staleness must be an integer >= 0, got {staleness}")
        self.staleness = int(staleness)

    def ready(self, clock: int, progress: int) -> bool:
        return progress >= clock - self.staleness


@PACES.register("asp", paper="Dean et al. 2012 (Downpour SGD)", summary="never wait")
class ASP(Pace):
    """Asynchronous: every pull is answered at once."""

    name = "asp"
    staleness = None

    def ready(self, clock: int, progress: int) -> bool:
        return True


def make_pace(spec: str | dict[str, Any]) -> Pace:
    """Build a pace from ``"bsp"`` or ``{name = "ssp", staleness = 4}``.

    Raises:
        ConfigError: unknown name (the valid ones are listed) or a bad parameter.
    """
    return PACES.build(spec)


class Quorum:
    """The first ``k`` of ``n`` pushes close a round (backup workers).

    Args:
        k: pushes that close a round, ``1 <= k <= n``.
        n: workers.

    Raises:
        ValueError: ``k`` outside ``[1, n]``.
    """

    def __init__(self, k: int, n: int):
        if not 1 <= n:
            raise ValueError(f"workers must be >= 1, got {n}")
        if int(k) != k or not 1 <= k <= n:
            raise ValueError(f"quorum must be an integer in [1, {n}] (the workers), got {k}")
        self.k, self.n = int(k), int(n)

    def need(self, active: int) -> int:
        """Pushes that close a round while ``active`` workers still train.

        Once workers finish, fewer remain to push; a round then needs at most that many,
        so the last workers are never held forever.
        """
        return max(1, min(self.k, active))

    def closes(self, count: int, active: int) -> bool:
        return count >= self.need(active)


class BoundedDelay:
    """A round may leave a worker out only while its newest push is at most ``tau`` rounds old.

    Reference: Zhang & Kwok 2014 (partial barrier + bounded delay; their "every worker is
    heard from at least once every τ rounds" is our τ + 1). ``last[w]`` is the round that last took a push of worker ``w``
    (−1: none yet, the initial model stands in for it); leaving ``w`` out of round ``r``
    makes its contribution ``r − last[w]`` rounds old.

    Args:
        tau: the largest delay in rounds, >= 0 (0: every worker in every round).

    Raises:
        ValueError: ``tau`` is not an integer >= 0.
    """

    def __init__(self, tau: int):
        if isinstance(tau, bool) or int(tau) != tau or tau < 0:
            raise ValueError(f"max_delay must be an integer >= 0, got {tau}")
        self.tau = int(tau)

    def overdue(self, round_: int, last: dict[int, int], active) -> list[int]:
        """Active workers that round ``round_`` must wait for (in rank order)."""
        return sorted(w for w in active if round_ - last[w] > self.tau)
