"""The state a survivor or a replacement receives: structure as JSON, tensors as bytes."""

import json

import pytest
import torch

from distml.comm.state_transfer import pack, unpack


def test_an_optimizer_and_model_state_round_trip_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "algorithm": {"round": 3, "hat": None, "pair": (1, 2.5), "empty": torch.empty(0)}}
    skeleton, payload = pack(state)
    assert payload.dtype == torch.uint8
    back = unpack(json.loads(json.dumps(skeleton)), payload)     # the wire carries JSON
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    fresh.load_state_dict(back["optimizer"])                     # int keys survive
    assert fresh.param_groups[0]["lr"] == 0.01
    for k, v in state["model"].items():
        assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v)
    assert back["algorithm"]["pair"] == (1, 2.5) and back["algorithm"]["hat"] is None
    assert back["algorithm"]["empty"].numel() == 0


def test_anything_but_tensors_and_json_values_is_refused():
    with pytest.raises(TypeError, match="cannot transfer a object"):
        pack({"x": object()})
