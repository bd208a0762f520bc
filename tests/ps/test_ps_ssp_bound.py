"""SSP's bound holds for every accepted push_every/pull_every, measured without the server
(issue 14, point 1).

tests/ps/ssp_world.py gives each worker a marker coordinate that only its pushes move;
a worker's staleness before a step is its own clock minus the other worker's pushes
that the parameters it computes on contain. Accepted combinations stay within ``s``;
``pull_every = 3, push_every = 1`` — refused by the config — is measured too and runs
further ahead, so the measurement can fail.
"""

import json
import sys
from pathlib import Path

import pytest

import distml
from distml.errors import ConfigError
from procs import run

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]

HERE = Path(__file__).parent
S = 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("sspworld") / "out"
    res = run([sys.executable, "-m", "distml", "launch", "-n", "3", str(HERE / "ssp_world.py"),
               str(prefix)], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(2)]


def measured_staleness(world, combo: str) -> int:
    w0, w1 = world[0][combo], world[1][combo]
    final = w0["final"]
    unit = final[0] / w0["pushes"]           # one push's move of a marker coordinate
    assert final[1] == pytest.approx(unit * w1["pushes"])
    worst = 0
    for w in (w0, w1):
        for s in w["steps"]:
            seen = s["other"] / unit
            assert abs(seen - round(seen)) < 1e-9, seen
            worst = max(worst, s["clock"] - round(seen))
    return worst


@pytest.mark.parametrize("combo", ["1,1", "2,1", "3,3"])
def test_accepted_combinations_keep_the_bound(world, combo):
    assert measured_staleness(world, combo) <= S


def test_the_refused_combination_breaks_the_bound(world):
    assert measured_staleness(world, "1,3") > S


def test_config_refuses_a_pull_every_that_does_not_divide_push_every():
    base = {"workers": 2, "data": {"source": {"name": "sklearn", "dataset": "digits"}},
            "model": {"name": "softmax"},
            "algorithm": {"name": "ps", "pace": {"name": "ssp", "staleness": S},
                          "push_every": 1, "pull_every": 3}}
    with pytest.raises(ConfigError, match="pull_every"):
        distml.plan(base)
    base["algorithm"].update(push_every=4, pull_every=2)
    distml.plan(base)
