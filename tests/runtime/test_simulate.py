"""The cost model behind `distml simulate`: formulas, per-step traffic, calibration (no processes)."""

import json

import pytest

from distml.errors import UserError
from distml.runtime import simulate as sim


def _run_dir(tmp_path, ops, steps=100, workers=2, compute=5.0, comm=1.0):
    """A finished run's summary.json with the given per-rank transport counters."""
    per_rank = [{"rank": r, "ops": ops} for r in range(workers)]
    sent = sum(o["bytes_sent"] for o in ops.values()) * workers
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": steps, "workers": workers, "algorithm": "sync_sgd", "bytes_sent": sent,
        "compute_seconds": compute, "comm_seconds": comm, "wait_seconds": 0.0,
        "wall_seconds": compute + comm, "per_rank": per_rank}))
    return tmp_path


def test_wire_efficiency_is_tcp_goodput_per_link_byte():
    assert sim.wire_efficiency() == pytest.approx(1448 / 1547)          # duplex: ACKs share egress
    assert sim.wire_efficiency(duplex=False) == pytest.approx(1448 / 1514)
    assert sim.wire_efficiency(9000) == pytest.approx(8948 / 9047)         # jumbo frames
    with pytest.raises(ValueError, match="mtu must be >= 576"):
        sim.wire_efficiency(100)


def test_collective_formulas():
    m, bw, a = 4e6, 1e6, 1e-3
    assert sim.ring_allreduce(4, m, bw, a) == pytest.approx(2 * 3 / 4 * 4 + 2 * 3 * a)
    assert sim.ring_allgather(3, m, bw, a) == pytest.approx(2 * 4 + 2 * a)
    assert sim.tree_allreduce(5, m, bw, a) == pytest.approx(2 * 3 * (4 + a))
    assert sim.parameter_server(4, m, bw, a, servers=2) == pytest.approx(2 * 8 + 2 * a)
    assert sim.gossip(8, m, bw, a, degree=2) == pytest.approx(2 * 4 + 2 * a)
    for f in (sim.ring_allreduce, sim.ring_allgather, sim.tree_allreduce, sim.gossip):
        assert f(1, m, bw, a) == 0.0


def test_per_step_ops_leave_out_the_initial_broadcast_and_count_calls(tmp_path):
    ops = {"all_gather": {"calls": 200, "bytes_sent": 200 * 1000, "seconds": 0.5},
           "broadcast": {"calls": 1, "bytes_sent": 123456, "seconds": 0.01},
           "barrier": {"calls": 100, "bytes_sent": 0, "seconds": 0.01}}
    prof = sim.profile(_run_dir(tmp_path, ops))
    assert prof["ops"] == {"all_gather": {"bytes": 2000.0, "calls": 2.0}}
    assert prof["bytes_per_step"] == 2000.0 and prof["gathered"]
    assert prof["compute_per_step"] == pytest.approx(0.05)
    assert prof["comm_per_step"] == pytest.approx(0.01)
    # 2 workers: an all-gather call is 1 hop, 2 calls a step -> 5 ms a hop
    assert sim.software_alpha(prof) == pytest.approx(0.005)


def test_predict_step_replays_the_runs_collectives(tmp_path):
    ops = {"all_reduce": {"calls": 300, "bytes_sent": 100 * 3e6, "seconds": 0.3}}   # 3 calls a step
    prof = sim.profile(_run_dir(tmp_path, ops, comm=1.2))
    a_sw = sim.software_alpha(prof)                    # 12 ms a step / (3 calls · 2 hops)
    assert a_sw == pytest.approx(0.002)
    bw, eff = 12.5e6, sim.wire_efficiency()
    n = 3
    expected = 0.05 + 2 * 2 / 3 * 3e6 / (eff * bw) + 3 * 2 * 2 * (1e-4 + a_sw)
    assert sim.predict_step(prof, n, bw, latency=1e-4) == pytest.approx(expected)
    plain = sim.predict_step(prof, n, bw, efficiency=1.0, alpha_sw=0.0)
    assert plain == pytest.approx(0.05 + sim.ring_allreduce(n, 3e6, bw, 0.0))
    rows = sim.project(prof, [n], bw, 1e-4)
    ring = next(r for r in rows if r["topology"] == "ring_allreduce" and r["payload"] == "run")
    assert ring["step_seconds"] == pytest.approx(expected)


def test_profile_needs_a_finished_run(tmp_path):
    with pytest.raises(UserError, match="summary.json not found"):
        sim.profile(tmp_path)


def test_gloo_all_gather_between_two_workers_is_one_and_a_half_transfers():
    m, bw, a = 3e6, 1e6, 1e-3
    assert sim.gloo_allgather(2, m, bw, a) == pytest.approx(1.5 * 3 + a)
    assert sim.gloo_allgather(3, m, bw, a) == sim.ring_allgather(3, m, bw, a)
    ops = {"all_gather": {"bytes": m, "calls": 2.0}}
    assert sim.comm_seconds(ops, 2, bw, a) == pytest.approx(1.5 * 3 + 2 * a)
    assert sim.comm_seconds(ops, 2, bw, a, gloo=False) == pytest.approx(3 + 2 * a)


def _simulate(capsys, run_dir, *extra):
    from distml.cli import main
    rc = main(["simulate", "--profile", str(run_dir), "--workers", "4", "--bandwidth", "100Mbit",
               "--latency", "100us", "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_simulate_defaults_to_the_physical_network_and_names_its_knobs(tmp_path, capsys):
    """The calibrated software latency is opt-in; goodput and scaling efficiency are apart."""
    ops = {"all_reduce": {"calls": 300, "bytes_sent": 100 * 3e6, "seconds": 0.3}}
    run = _run_dir(tmp_path, ops, comm=1.2)                  # 2 ms per hop measured there
    rc, physical = _simulate(capsys, run)
    assert rc == 0 and physical["software_latency_s"] == 0.0
    assert physical["calibrated_software_latency_s"] == pytest.approx(0.002)
    assert physical["goodput"] == pytest.approx(sim.wire_efficiency())
    rc, calibrated = _simulate(capsys, run, "--software-latency", "calibrated", "--goodput", "1")
    assert rc == 0 and calibrated["software_latency_s"] == pytest.approx(0.002)
    ring = [next(r for r in p["projection"] if r["topology"] == "ring_allreduce")
            for p in (physical, calibrated)]
    assert ring[0]["scaling_efficiency"] > ring[1]["scaling_efficiency"]
    assert ring[1]["step_seconds"] == pytest.approx(
        sim.predict_step(sim.profile(run), 4, 12.5e6, 1e-4, efficiency=1.0, alpha_sw=0.002))


def test_simulate_says_what_it_calibrated_from(tmp_path, capsys):
    from distml.cli import main
    ops = {"all_reduce": {"calls": 300, "bytes_sent": 100 * 3e6, "seconds": 0.3}}
    run = _run_dir(tmp_path, ops, comm=1.2)
    assert main(["simulate", "--profile", str(run), "--workers", "4"]) == 0
    out = capsys.readouterr().out
    assert f"calibrated from {run} (sync_sgd, 2 workers): compute 50.00 ms/step" in out
    assert "all_reduce 3 call(s) 3.000 MB" in out
    assert "software latency per hop measured there: 2.000 ms (not used" in out
    assert "scaling_efficiency" in out and "goodput" in out
    with pytest.raises(SystemExit) as e:                      # renamed: --goodput
        main(["simulate", "--profile", str(run), "--efficiency", "0.5"])
    assert e.value.code == 2


def test_compute_slows_by_ranks_per_core_when_ranks_share_a_host(tmp_path):
    ops = {"all_reduce": {"calls": 100, "bytes_sent": 100 * 1e6, "seconds": 0.1}}
    prof = sim.profile(_run_dir(tmp_path, ops))          # 2 workers, 50 ms of compute a step
    bw = 12.5e6
    # 16 ranks on 2 cores: each gets 1/8 of a core; the profile's 2 ranks had one each
    assert sim.compute_per_step(prof, 16, cores=2) == pytest.approx(0.05 * 8)
    assert sim.compute_per_step(prof, 16, cores=2, ranks_per_host=1) == pytest.approx(0.05)
    assert sim.compute_per_step(prof, 3, cores=4) == pytest.approx(0.05)      # cores to spare
    assert sim.compute_per_step(prof, 16, cores=1) == pytest.approx(0.05 * 16 / 2)
    shared = sim.predict_step(prof, 16, bw, cores=2)
    assert shared - sim.predict_step(prof, 16, bw) == pytest.approx(0.05 * 7)
    with pytest.raises(ValueError, match="ranks and cores must be >= 1"):
        sim.oversubscription(4, 0)
    # the parameter server's servers are ranks too: 8 workers + 4 servers against 2 + 1
    prof["algorithm"], prof["topology"] = "ps", {"servers": 1}
    assert sim.processes(prof, 8, servers=4) == 12
    assert sim.compute_per_step(prof, 8, cores=2, servers=4) == pytest.approx(0.05 * 6 / 1.5)

