"""The state a survivor or a replacement receives: structure as JSON, tensors as bytes,
all in one buffer."""

import pytest
import torch

from distml.comm.state_transfer import ALIGN, broadcast_state, pack, unpack


def test_an_optimizer_and_model_state_round_trip_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "algorithm": {"round": 3, "hat": None, "pair": (1, 2.5), "empty": torch.empty(0)}}
    buffer = pack(state)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    back = unpack(buffer.clone())                                # what the receiver gets
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    fresh.load_state_dict(back["optimizer"])                     # int keys survive
    assert fresh.param_groups[0]["lr"] == 0.01
    for k, v in state["model"].items():
        assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v)
    assert back["algorithm"]["pair"] == (1, 2.5) and back["algorithm"]["hat"] is None
    assert back["algorithm"]["empty"].numel() == 0


def test_odd_sizes_dtypes_and_strides_land_aligned_as_views_of_the_buffer():
    weight = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    state = {"flag": torch.tensor(True), "byte": torch.tensor([7], dtype=torch.uint8),
             "wide": torch.tensor([1 + 2j], dtype=torch.complex128), "scalar": torch.tensor(2.5),
             "transposed": weight.t(), "empty": torch.empty(0, 3, dtype=torch.int64),
             "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}
    buffer = pack(state)
    back = unpack(buffer)
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    for k, v in state.items():
        got = back[k]
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
        if v.numel():                                            # (an empty one has no address)
            assert start <= got.data_ptr() < end and (got.data_ptr() - start) % ALIGN == 0, k


def test_a_state_without_tensors_and_an_empty_one_are_the_skeleton_alone():
    assert unpack(pack({})) == {}
    assert unpack(pack(None)) is None
    plain = {"step": 4, "names": ["a", "b"], "pair": (1, None)}
    buffer = pack(plain)
    assert unpack(buffer) == plain
    assert buffer.numel() % ALIGN == 0                           # padding only, no tensor bytes


def test_a_big_skeleton_keeps_its_tensors_intact():
    state = {f"layer{i}.weight": torch.full((2,), float(i)) for i in range(5000)}
    state["name"] = "é" * 70000                                  # JSON escapes it: > 64 KiB
    back = unpack(pack(state))
    assert back["name"] == state["name"]
    assert all(torch.equal(back[k], v) for k, v in state.items() if k != "name")


class _Wire:
    """The broadcasts of one source, replayed to a receiver (the transport's shape)."""

    def __init__(self, rank, sent=None):
        self.rank, self.sent = rank, sent if sent is not None else []

    def broadcast(self, x, src, async_op=False):
        if self.rank == src:
            self.sent.append(x)              # (read after the wait, as the wire would)
        else:
            x.copy_(self.sent.pop(0))
        return _Sent() if async_op else x


class _Sent:
    def wait(self):
        return None


def test_broadcast_state_sends_the_size_then_one_buffer():
    state = {"w": torch.randn(5, 3), "step": 9}
    lead = _Wire(0)
    assert broadcast_state(lead, state, 0) is state
    assert [t.numel() for t in lead.sent[:1]] == [1] and len(lead.sent) == 2
    assert lead.sent[1].numel() == int(lead.sent[0][0])
    back = broadcast_state(_Wire(1, list(lead.sent)), None, 0)
    assert back["step"] == 9 and torch.equal(back["w"], state["w"])


def test_anything_but_tensors_and_json_values_is_refused():
    with pytest.raises(TypeError, match="cannot transfer a object"):
        pack({"x": object()})
