"""The cost model's topology-shaped methods (no processes): the parameter server's and
gossip's point-to-point traffic re-shaped for N workers, and the transport's per-call
latency, against the formulas written out by hand."""

import json

import pytest

from distml.runtime import simulate as sim


def _profile(tmp_path, algorithm, table, ops, workers=2, steps=100, compute=1.0, comm=2.0):
    per_rank = [{"rank": r, "ops": ops} for r in range(workers)]
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": steps, "workers": workers, "algorithm": algorithm, "bytes_sent": 0,
        "compute_seconds": compute, "comm_seconds": comm, "wait_seconds": 0.0,
        "wall_seconds": compute + comm, "per_rank": per_rank}))
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": {"name": algorithm, **table}}))
    return sim.profile(tmp_path)


def test_parameter_server_bytes_follow_workers_over_servers(tmp_path):
    m = 4e5        # a worker pushes M a step; 3 sends and 2 receives a step
    ops = {"send": {"calls": 300, "bytes_sent": 100 * m, "seconds": 1.0},
           "recv": {"calls": 200, "bytes_sent": 0, "seconds": 1.0}}
    prof = _profile(tmp_path, "ps", {"servers": 1}, ops)
    assert prof["topology"] == {"servers": 1, "graph": "ring"} and prof["calls_per_step"] == 5.0
    bw, a = 1e7, 1e-3
    for n, s in [(8, 1), (8, 4), (16, 2)]:
        expected = 2 * max(m, n * m / s) / bw + 3 * (s / 1) * a      # send calls grow with S
        assert sim.predict_comm(prof, n, bw, efficiency=1.0, alpha_sw=a, servers=s) == pytest.approx(expected)
    # 4 servers spread the load: 4× less time on the bytes at 8 workers
    assert sim.predict_comm(prof, 8, bw, efficiency=1.0, alpha_sw=0.0, servers=1) == pytest.approx(
        4 * sim.predict_comm(prof, 8, bw, efficiency=1.0, alpha_sw=0.0, servers=4))


@pytest.mark.parametrize("graph,n,degree", [("ring", 16, 2), ("torus", 16, 4), ("exponential", 16, 1),
                                            ("torus", 8, 3)])
def test_gossip_sends_the_model_to_each_neighbour(tmp_path, graph, n, degree):
    m = 4e5        # at 2 workers every graph has one neighbour: one send of M a step
    ops = {"send": {"calls": 100, "bytes_sent": 100 * m, "seconds": 1.0}}
    prof = _profile(tmp_path, "gossip", {"graph": graph}, ops)
    assert sim.out_degree(graph, 2) == 1 and sim.out_degree(graph, n) == degree
    bw, a, lat = 1e7, 1e-3, 2e-3
    got = sim.predict_step(prof, n, bw, efficiency=1.0, alpha_sw=a, call_latency=lat)
    assert got == pytest.approx(0.01 + degree * m / bw + degree * a + degree * lat)


def test_call_latency_adds_once_per_call_not_per_hop(tmp_path):
    ops = {"all_reduce": {"calls": 300, "bytes_sent": 300 * 1e5, "seconds": 1.0},
           "barrier": {"calls": 100, "bytes_sent": 0, "seconds": 0.1}}
    prof = _profile(tmp_path, "sync_sgd", {}, ops)
    assert prof["topology"] is None and prof["calls_per_step"] == 4.0     # barriers pay it too
    base = sim.predict_comm(prof, 8, 1e7, alpha_sw=0.0)
    assert sim.predict_comm(prof, 8, 1e7, alpha_sw=0.0, call_latency=0.002) == pytest.approx(base + 4 * 0.002)


def test_gossip_keeps_its_collectives_whose_hops_grow_with_the_workers():
    # a ring: 1 MB to each of 2 neighbours a step, and every 10 steps an all-reduce of 8 kB
    prof = {"algorithm": "gossip", "workers": 2, "topology": {"servers": 1, "graph": "ring"},
            "ops": {"send": {"bytes": 1e6, "calls": 1.0}, "all_reduce": {"bytes": 800.0, "calls": 0.1}},
            "compute_per_step": 0.0, "comm_per_step": 0.0, "calls_per_step": 1.1}
    bw, a = 1e6, 1e-3
    n = 16                  # 2 neighbours (1 at the profile's 2 workers), 2·15 hops an all-reduce
    expected = 2 * (1.0 + a) + (2 * 15 / 16 * 800 / bw + 0.1 * 2 * 15 * a)
    assert sim.predict_comm(prof, n, bw, efficiency=1.0, alpha_sw=a) == pytest.approx(expected)
