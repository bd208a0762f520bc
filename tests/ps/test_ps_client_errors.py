"""A dead parameter server is named the same way whenever the worker notices it."""

import datetime

import pytest
import torch

from distml.comm.ps.client import PSClient
from distml.errors import PeerError


class _GoneServer:
    """A transport whose server reset the connection: posting a message already fails."""

    global_rank, timeout = 0, datetime.timedelta(seconds=6)

    def global_of(self, r):
        return r

    def isend(self, *a, **k):
        raise PeerError("rank 0: send failed — a peer died (connection reset)")

    irecv = isend


@pytest.mark.parametrize("call", ["push", "pull", "checkpoint", "stop", "done"])
def test_a_server_gone_before_the_post_is_named_like_one_gone_during_the_wait(call):
    """A kill that lands between two pushes fails the next *post*, not a wait; the error
    must still say which servers failed (tests/faults found the race)."""
    client = PSClient(_GoneServer(), servers=[2], bounds=[(0, 4)])
    args = {"push": (torch.zeros(4), 1), "pull": (torch.zeros(4), 1), "checkpoint": (5,),
            "stop": (), "done": ()}[call]
    with pytest.raises(PeerError, match=rf"{call} to the parameter servers \(ranks 2\) failed: "
                                        r"a server died .*connection reset"):
        getattr(client, call)(*args)
