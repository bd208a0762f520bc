"""The PS protocol in real processes: exactly-once accounting, pace bounds, quorum drops.

One `distml launch -n 4` world runs every phase of tests/ps/ps_world.py (3 workers + 1
server, then 2 workers + 2 servers) once per module; the tests read what it wrote.
"""

import json
import sys
from pathlib import Path

import pytest

from procs import run

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("psworld") / "out"
    res = run([sys.executable, "-m", "distml", "launch", "-n", "4", str(HERE / "ps_world.py"),
               str(prefix)], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(4)]


def _phase(world, name):
    ranks = [w[name] for w in world]
    servers = [x for x in ranks if x["role"] == "server"]
    workers = [x for x in ranks if x["role"] == "worker"]
    params = []
    for s in sorted(servers, key=lambda s: s["bounds"][0]):
        params += s["params"]
    return workers, servers, params


@pytest.mark.parametrize("name", ["bsp", "ssp2", "asp", "quorum", "bsp_2servers", "asp_2servers"])
def test_every_push_is_applied_exactly_once_or_counted_as_dropped(world, name):
    workers, servers, params = _phase(world, name)
    pushes = sum(w["pushes"] for w in workers)
    for s in servers:     # every shard sees every push: applied + dropped = pushed
        rep = s["report"]
        assert rep["pushes_applied"] + rep["pushes_dropped"] == pushes
    dropped = {int(k): v for k, v in servers[0]["report"]["dropped_by_worker"].items()}
    assert params[0] == pushes - sum(dropped.values())
    for rank in range(len(workers)):
        assert params[1 + rank] == workers[rank]["pushes"] - dropped[rank]
    # the final model rank 0 received is the server's
    assert workers[0]["final"] == params


def test_bsp_has_no_staleness_and_drops_nothing(world):
    for name in ("bsp", "bsp_2servers"):
        workers, servers, _ = _phase(world, name)
        assert max(max(w["stale"]) for w in workers) == 0
        assert all(s["report"]["pushes_dropped"] == 0 for s in servers)


def test_ssp_never_exceeds_its_bound_and_asp_lags_further(world):
    ssp_workers, _, _ = _phase(world, "ssp2")
    asp_workers, _, _ = _phase(world, "asp")
    ssp_max = max(max(w["stale"]) for w in ssp_workers)
    asp_max = max(max(w["stale"]) for w in asp_workers)
    assert ssp_max <= 2
    # rank 2 sleeps 8x as long as rank 0 per step: without a bound the lead grows
    assert asp_max > 2, asp_max


def test_quorum_closes_rounds_without_the_slow_worker_and_counts_its_drops(world):
    workers, servers, _ = _phase(world, "quorum")
    rep = servers[0]["report"]
    dropped = {int(k): v for k, v in rep["dropped_by_worker"].items()}
    assert dropped[2] > 0                        # the slow worker's late pushes
    assert dropped[2] >= dropped[0] + dropped[1]
    assert rep["rounds"] >= 30                   # the fast workers' 30 rounds closed without it
