"""Tensor parallelism (column/row MLP blocks, 2 workers) equals the single-process model."""

import pytest

from test_alg_pipeline import check_equal

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]


def test_tensor_parallel_equals_single_process(tmp_path):
    events = check_equal(tmp_path, 'name = "tensor_parallel"')
    # the row-parallel layer's outputs (32 × 32 float64) were all-reduced every step
    assert events[-1]["bytes_sent"] >= 3 * 32 * 32 * 8
