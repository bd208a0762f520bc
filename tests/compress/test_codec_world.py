"""Every codec through a real 2-process transport; our PowerSGD against torch's hook."""

import json
from pathlib import Path

import pytest
import torch

from procs import distml

HERE = Path(__file__).parent
pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]


def _name(spec):
    return spec if isinstance(spec, str) else spec["name"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("codecs") / "all"
    res = distml("launch", "-n", "2", str(HERE / "codec_world.py"), "all", str(out), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]


def test_every_registered_codec_was_exercised(world):
    used = {_name(s) for c in world[0]["cases"] for s in c["spec"]}
    assert used == set(world[0]["codec_names"])


def test_wire_size_equals_bytes_the_transport_counted(world):
    r0, r1 = world
    for a, b in zip(r0["cases"], r1["cases"]):
        if "wire_bytes" not in a:       # the Reducer: P and Q of a 50×60 float64 matrix, rank 1
            assert a["sent"] == b["sent"] == (50 + 60) * 1 * 8
            continue
        if _name(a["spec"][0]) == "threshold":
            # variable size: a header of 2 int64 lengths, then both tensors padded to the longest
            longest = [max(x, y) for x, y in zip(a["payload_numels"], b["payload_numels"])]
            want = 16 + sum(n * s for n, s in zip(longest, a["payload_itemsizes"]))
            assert a["sent"] == b["sent"] == want, a["spec"]
            assert a["payload_numels"] != b["payload_numels"]   # the padding was exercised
        else:
            assert a["sent"] == a["wire_bytes"] and b["sent"] == b["wire_bytes"], a["spec"]


def test_reduced_mean_is_the_mean_of_every_rank_decoded_payload(world):
    r0, r1 = world
    for a, b in zip(r0["cases"], r1["cases"]):
        m0, m1 = torch.tensor(a["mean"], dtype=torch.float64), torch.tensor(b["mean"], dtype=torch.float64)
        assert torch.equal(m0, m1), a["spec"]                # every rank gets the same mean
        if "decoded" not in a:
            continue
        want = (torch.tensor(a["decoded"], dtype=torch.float64)
                + torch.tensor(b["decoded"], dtype=torch.float64)) / 2
        # summable casts add in their own precision on the wire
        tol = {"fp16": 2e-3, "bf16": 2e-2}.get(_name(a["spec"][0]), 1e-12)
        assert (m0 - want).abs().max().item() <= tol, a["spec"]
        exact = (torch.tensor(a["x"], dtype=torch.float64) + torch.tensor(b["x"], dtype=torch.float64)) / 2
        assert (m0 - exact).norm() < exact.norm() * 2      # and it approximates the true mean


def test_powersgd_equals_torch_powersgd_hook(world):
    for r in world:
        assert r["calls"] == 6 and r["compressed_rounds"] == 4
        assert r["output_norm"] > 0
        assert r["worst"] <= 1e-5
