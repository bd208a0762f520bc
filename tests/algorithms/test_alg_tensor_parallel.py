"""Tensor parallelism (column/row MLP blocks, 2 workers) equals the single-process model."""

import json

import pytest

from test_alg_pipeline import STEPS, check_equal

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]


def test_tensor_parallel_equals_single_process(tmp_path):
    check_equal(tmp_path, 'name = "tensor_parallel"')
    # counted from torch's own collectives: the row-parallel layer's output (batch 32 ×
    # 32 float64) is all-reduced once per step on each rank; the column-parallel layer's
    # input is the data, which needs no gradient, so the backward moves nothing
    check_tensor_parallel_traffic(tmp_path, per_step=[32 * 32 * 8])


def check_tensor_parallel_traffic(tmp_path, per_step: list[int]):
    """Each rank's ``tensor_parallel`` counter holds exactly the all-reduces of ``per_step``
    (their sizes in bytes) every step, with time booked as communication."""
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for rank in summary["per_rank"]:
        tp = rank["ops"]["tensor_parallel"]
        assert (tp["bytes_sent"], tp["bytes_received"], tp["calls"]) == \
            (STEPS * sum(per_step), STEPS * sum(per_step), STEPS * len(per_step)), tp
        assert 0 < tp["seconds"] <= rank["comm_seconds"]
