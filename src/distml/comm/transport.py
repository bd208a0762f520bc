"""The one door to torch.distributed.

Every byte that crosses a process boundary goes through :class:`Transport`, so every
byte is counted (per operation kind), every wait has a timeout, and a dead peer turns
into a :class:`~distml.errors.PeerError` instead of a hang. Algorithms never import
``torch.distributed``; the model-parallel ones may take :attr:`Transport.group` for
torch's own pipelining / tensor-parallel modules, whose traffic
those algorithms count on this transport's stats (pipeline's ``counted_stage``,
tensor_parallel's ``CountedCollectives``; :func:`is_send` and :func:`nbytes` are here).

Bytes follow docs/design.md §5: ``sent`` is the payload a rank hands to the transport (its
all-reduce input, its sends), ``received`` is what it gets back; the collective's
internal ring traffic is not counted here.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from distml.comm.oplog import END, OpLog
from distml.errors import PeerError

log = logging.getLogger(__name__)

#: the longest any rank waits for rank 0's evaluation (far above any peer timeout)
EVAL_WAIT_S = 1800.0
_BARRIER_TAG = 0x0E7A1     # a long barrier's own messages (apart from every other p2p tag)

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.AVG,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


@dataclass
class OpStats:
    """Counters of one operation kind."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


@dataclass
class CommStats:
    """Per-operation byte, message and time counters of one rank.

    ``comm_seconds`` is time inside transport calls (including waits on async
    handles); ``wait_seconds`` is time blocked on a peer or a pace rule outside a
    collective (barriers, held pulls), reported separately per docs/design.md §5.
    """

    ops: dict[str, OpStats] = field(default_factory=dict)
    wait_seconds: float = 0.0

    def record(self, op: str, sent: int = 0, received: int = 0, seconds: float = 0.0,
               calls: int = 1) -> None:
        s = self.ops.setdefault(op, OpStats())
        s.calls += calls
        s.bytes_sent += sent
        s.bytes_received += received
        s.seconds += seconds

    def as_wait(self, op: str, seconds: float) -> None:
        """Count ``seconds`` of ``op``'s time as waiting: a peer held the answer on purpose
        (a parameter server's pace rule), which is wait, not communication (docs/design.md §5)."""
        s = self.ops.get(op)
        moved = min(max(seconds, 0.0), s.seconds) if s is not None else 0.0
        if moved > 0:
            s.seconds -= moved
            self.wait_seconds += moved

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.ops.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.ops.values())

    @property
    def comm_seconds(self) -> float:
        return sum(s.seconds for s in self.ops.values())

    @property
    def messages(self) -> int:
        return sum(s.calls for s in self.ops.values())

    def snapshot(self) -> dict:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "comm_seconds": self.comm_seconds,
            "wait_seconds": self.wait_seconds,
            "messages": self.messages,
            "ops": {k: vars(v).copy() for k, v in sorted(self.ops.items())},
        }

    def load_snapshot(self, snap: dict) -> None:
        self.ops = {k: OpStats(**v) for k, v in snap.get("ops", {}).items()}
        self.wait_seconds = float(snap.get("wait_seconds", 0.0))


def nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def is_send(p2p_op: dist.P2POp) -> bool:
    """Whether a point-to-point operation torch posts for us (pipelining) sends its tensor."""
    return p2p_op.op is dist.isend


class Handle:
    """An operation in flight; :meth:`wait` blocks (within the timeout) and counts the time.

    ps-lite style: ``h = transport.all_reduce(x, async_op=True); ...; h.wait()``.
    """

    def __init__(self, transport: Transport, op: str, work, sent: int, received: int,
                 result=None, on_done=None, record=None):
        self._transport = transport
        self._record = record       # its entry in the transport's OpLog (None: nothing ran)
        self._op = op
        self._work = work
        self._sent = sent
        self._received = received
        self._result = result
        self._on_done = on_done
        self._done = False

    def is_completed(self) -> bool:
        return self._done or self._work.is_completed()

    def wait(self, timeout_s: float | None = None):
        """Block until done; return the operation's result (the tensor, or the sender for recv).

        ``timeout_s``: a longer limit than the transport's (a wait on rank 0's evaluation).
        """
        if not self._done:
            t0 = time.perf_counter()
            limit = self._transport.timeout if timeout_s is None else \
                datetime.timedelta(seconds=timeout_s)
            self._transport._guard(self._op, lambda: self._work.wait(limit))
            t1 = time.perf_counter()
            if self._record is not None:
                OpLog.end(self._record, t1)
            self._transport.stats.record(self._op, self._sent, self._received, t1 - t0, calls=0)
            self._done = True
            if self._on_done is not None:
                self._result = self._on_done()
        return self._result


class Transport:
    """Rank, world and every communication primitive, with accounting and timeouts.

    Args:
        rank: this process's rank in ``group`` (the default group if None).
        world_size: number of ranks in the group.
        timeout_s: the longest any call may wait for a peer.
        group: a torch process group; None means the default (world) group.
        stats: counters to add to (subgroups share their parent's).
        oplog: the ring buffer of recent operations (hang reports; subgroups share it).
        latency_ms: extra delay injected before every message, to emulate a slow
            network (netem is not available on our hosts, docs/design.md §6).
    """

    def __init__(self, rank: int, world_size: int, timeout_s: float = 60.0, group=None,
                 stats: CommStats | None = None, latency_ms: float = 0.0, global_ranks=None,
                 oplog: OpLog | None = None):
        self.rank = rank
        self.world_size = world_size
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.group = group
        self.stats = stats if stats is not None else CommStats()
        self.oplog = oplog if oplog is not None else OpLog()
        self.latency_s = latency_ms / 1000.0
        self._global_ranks = list(global_ranks) if global_ranks is not None else list(range(world_size))
        self._subgroups: list[Transport] = []
        self.store = None       # the rendezvous store this world met through (rejoin)
        self.backend_name = "gloo"
        self.parent: Transport | None = None     # the transport a subgroup was made from

    # ---- lifecycle -------------------------------------------------------------------
    @classmethod
    def connect(cls, store, rank: int, world_size: int, backend: str = "gloo",
                timeout_s: float = 60.0, latency_ms: float = 0.0, device_id=None,
                prefix: str | None = None) -> Transport:
        """Join the world through a c10d store (created by the launcher or torchrun).

        ``prefix``: meet under this prefix of ``store`` (a replacement joining the group
        that the others formed with :meth:`rejoin`, runtime/elastic.py).

        Raises:
            PeerError: the other ranks did not join within ``timeout_s``.
        """
        meet = dist.PrefixStore(prefix, store) if prefix is not None and store is not None else store
        kwargs = {"store": meet} if store is not None else {"init_method": "env://"}
        if device_id is not None:
            kwargs["device_id"] = device_id
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        except (RuntimeError, dist.DistStoreError) as e:
            raise PeerError(f"rank {rank}: could not join the {world_size}-rank world within "
                            f"{timeout_s:g} s ({_first_line(e)})") from e
        joined = cls(rank, world_size, timeout_s=timeout_s, latency_ms=latency_ms)
        joined.store, joined.backend_name = store, backend
        return joined

    def rejoin(self, rank: int, world_size: int, prefix: str) -> Transport:
        """Leave this (broken) world and form a new one, without restarting the process.

        The survivors of a dead peer each call it with their new ``rank`` among
        ``world_size`` and the same fresh ``prefix``: a new default process group meets
        over a :class:`torch.distributed.PrefixStore` of the same rendezvous store, so
        none of the old group's keys or connections are reused (runtime/elastic.py).
        Tearing the old group down first closes its connections, so a survivor still
        blocked on this one fails at once instead of at the timeout. Counters and the
        operation log carry over.

        Raises:
            PeerError: there is no store to meet through (``env://``, torchrun), or the
                others did not arrive within the timeout.
        """
        if self.store is None:
            raise PeerError(f"rank {self.global_rank}: cannot regroup without the launcher's store")
        self.leave_broken()
        timeout_s = self.timeout.total_seconds()
        try:
            dist.init_process_group(backend=self.backend_name, rank=rank, world_size=world_size,
                                    store=dist.PrefixStore(prefix, self.store),
                                    timeout=self.timeout)
        except (RuntimeError, dist.DistStoreError) as e:
            raise PeerError(f"rank {rank}: the {world_size} survivors did not regroup within "
                            f"{timeout_s:g} s ({_first_line(e)})") from e
        new = Transport(rank, world_size, timeout_s=timeout_s, stats=self.stats,
                        latency_ms=self.latency_s * 1000, oplog=self.oplog)
        new.store, new.backend_name = self.store, self.backend_name
        return new

    def place_threads(self, local_rank: int, local_world: int, threads_per_rank: int = 1,
                      force: bool = False):
        """Pin gloo's event-loop and work threads apart (see :mod:`distml.comm.placement`).

        Returns the :class:`~distml.comm.placement.Placement`, or None where it cannot
        help (NCCL, or :func:`~distml.comm.placement.should_place` says no: the reason is
        logged); ``force`` skips that check (benchmarks). Every rank of the group must call
        it: a barrier first makes sure gloo has made its threads; each rank then decides
        from what it observes on its own host.
        """
        from distml.comm.placement import place_gloo_threads, should_place
        if self.backend() != "gloo":
            return None
        self.barrier()
        decision = should_place(local_world, threads_per_rank=threads_per_rank)
        if not (force or decision):
            log.info("gloo threads left where the OS puts them: %s", decision.reason)
            return None
        return place_gloo_threads(local_rank)

    @classmethod
    def joined(cls, timeout_s: float = 60.0) -> Transport | None:
        """A transport over the world this process already joined (None if it joined none)."""
        if not dist.is_initialized():
            return None
        return cls(dist.get_rank(), dist.get_world_size(), timeout_s=timeout_s)

    @staticmethod
    def host_store(listen_socket, timeout_s: float):
        """Host the rendezvous store on an already-bound listening socket.

        Handing torch a socket bound to 127.0.0.1 keeps the store off other interfaces
        (a TCPStore given only a port listens on all of them).
        """
        return dist.TCPStore("127.0.0.1", listen_socket.getsockname()[1], is_master=True,
                             master_listen_fd=listen_socket.fileno(), wait_for_workers=False,
                             timeout=datetime.timedelta(seconds=timeout_s))

    @staticmethod
    def store_client(host: str, port: int, timeout_s: float):
        """Connect to a rendezvous store hosted by the launcher."""
        try:
            return dist.TCPStore(host, port, is_master=False,
                                 timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, dist.DistStoreError) as e:
            raise PeerError(f"cannot reach the rendezvous store at {host}:{port} ({_first_line(e)})") from e

    @staticmethod
    def backend() -> str:
        return dist.get_backend() if dist.is_initialized() else "none"

    def close(self) -> None:
        """Leave the world with the sequence that was clean in 18/18 runs (docs/design.md §6).

        The caller drops its model/optimizer references first; a final barrier makes
        sure no peer is still inside a collective when the group is destroyed.
        """
        if not dist.is_initialized():
            return
        gc.collect()
        try:
            self._guard("barrier", dist.barrier)    # a peer that died at the end names itself
        finally:
            dist.destroy_process_group()

    def leave_broken(self) -> None:
        """Tear a group with a dead peer down now, so that its connections close and a
        peer still blocked on this rank fails at once (not at the timeout).

        A connection stays open while any work item of the group lives, so the operations
        in flight are dropped from the operation log first; the caller drops its own
        (the traceback of the error holds the frames that held them). No ``gc.collect()``:
        reference counting frees them, and a full collection took seconds on a loaded host.
        """
        self.oplog.abandon()
        Transport.abort()

    @staticmethod
    def abort() -> None:
        """Tear the group down after a failure, without talking to peers."""
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # the group may already be broken; we are exiting anyway
                pass

    # ---- error handling --------------------------------------------------------------
    def _guard(self, op: str, fn):
        try:
            return fn()
        except PeerError:
            raise
        except (RuntimeError, dist.DistError) as e:
            raise PeerError(
                f"rank {self.global_rank}: {op} failed — a peer died or did not answer within "
                f"{self.timeout.total_seconds():g} s ({_first_line(e)})") from e

    @property
    def global_rank(self) -> int:
        return self._global_ranks[self.rank]

    def global_of(self, rank: int) -> int:
        """The world rank of this group's rank ``rank`` (for messages that name a peer)."""
        return self._global_ranks[rank]

    def _delay(self) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s)

    def _timed(self, op: str, fn, sent: int, received: int, peer: int | None = None):
        self._delay()
        t0 = time.perf_counter()
        rec = self.oplog.begin(op, peer, sent or received, t0)      # for hang reports
        out = self._guard(op, fn)
        t1 = time.perf_counter()
        rec[END] = t1       # OpLog.end inlined: every op pays for this line (bench/oplog.py)
        self.stats.record(op, sent, received, t1 - t0)
        return out

    def _start(self, op: str, fn, sent: int, received: int, result=None, on_done=None,
               peer: int | None = None) -> Handle:
        """Start an async op: the call itself is counted now, its wait when waited on."""
        self._delay()
        t0 = time.perf_counter()
        rec = self.oplog.begin(op, peer, sent or received, t0)    # runs until waited on
        work = self._guard(op, fn)
        OpLog.attach(rec, work)
        self.stats.record(op, 0, 0, time.perf_counter() - t0)
        return Handle(self, op, work, sent, received, result=result, on_done=on_done, record=rec)

    # ---- collectives -----------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor, op: str = "sum", async_op: bool = False):
        """Reduce ``x`` in place over the group; ``op`` in sum, avg, max, min, product.

        Returns:
            ``x`` (reduced), or a :class:`Handle` whose ``wait()`` returns it.
        """
        if op not in _REDUCE_OPS:
            raise ValueError(f"op must be one of {', '.join(_REDUCE_OPS)}, got {op!r}")
        n = nbytes(x)
        if self.world_size == 1:        # nothing is sent, nothing is counted
            return Handle(self, "all_reduce", _Done(), 0, 0, result=x) if async_op else x
        call = lambda: dist.all_reduce(x, op=_REDUCE_OPS[op], group=self.group, async_op=async_op)
        if async_op:
            return self._start("all_reduce", call, n, n, result=x)
        self._timed("all_reduce", call, n, n)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0, async_op: bool = False):
        """Broadcast ``x`` from group rank ``src`` in place."""
        n = nbytes(x)
        sent, received = (n, 0) if self.rank == src else (0, n)
        if self.world_size == 1:        # nothing is sent, nothing is counted
            return Handle(self, "broadcast", _Done(), 0, 0, result=x) if async_op else x
        call = lambda: dist.broadcast(x, src=self._global_ranks[src], group=self.group,
                                      async_op=async_op)
        if async_op:
            return self._start("broadcast", call, sent, received, result=x)
        self._timed("broadcast", call, sent, received)
        return x

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Gather equally shaped tensors from every rank; returns one per rank."""
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        n = nbytes(x)
        if self.world_size == 1:
            out[0].copy_(x)
            return out
        self._timed("all_gather", lambda: dist.all_gather(out, x, group=self.group),
                    n, n * (self.world_size - 1))
        return out

    def all_gather_json(self, obj) -> list:
        """Gather a small JSON-able value (metadata, not payloads) from every rank.

        Sent as UTF-8 JSON in a byte tensor, never as a pickle: a peer's data is never
        unpickled (docs/reliability.md). Dict keys come back as strings, as in JSON.
        """
        if self.world_size == 1:
            return [json.loads(json.dumps(obj))]
        # NCCL carries only tensors on this rank's GPU; gloo takes host tensors
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend(self.group) == "nccl" else torch.device("cpu"))
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(device)

        def gather():
            sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
            dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device),
                            group=self.group)
            longest = int(max(t.item() for t in sizes))
            padded = torch.zeros(longest, dtype=torch.uint8, device=device)
            padded[:data.numel()] = data
            out = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(self.world_size)]
            dist.all_gather(out, padded, group=self.group)
            return [json.loads(bytes(t[:int(n.item())].tolist()).decode())
                    for t, n in zip(out, sizes)]

        return self._timed("all_gather_json", gather, 0, 0)

    def reduce_scatter(self, out: torch.Tensor, inputs: list[torch.Tensor], op: str = "sum"):
        """Reduce ``inputs`` (one per rank) and keep this rank's part in ``out``."""
        n = sum(nbytes(t) for t in inputs)
        self._timed("reduce_scatter",
                    lambda: dist.reduce_scatter(out, inputs, op=_REDUCE_OPS[op], group=self.group),
                    n, nbytes(out))
        return out

    def barrier(self, timeout_s: float | None = None) -> None:
        """Wait until every rank arrives; counted as wait time, not communication.

        Args:
            timeout_s: a longer limit than the transport's, for waits on known slow work
                (rank 0 evaluating, see :attr:`eval_wait_s`); None uses the transport's timeout.
        """
        if self.world_size == 1:
            return
        self._delay()
        t0 = time.perf_counter()
        gloo = dist.get_backend(self.group) == "gloo"
        rec = self.oplog.begin("barrier", None, 0, t0, timeout_s)
        if timeout_s is not None and gloo:
            self._guard("barrier", lambda: self._long_barrier(datetime.timedelta(seconds=timeout_s)))
        else:
            self._guard("barrier", lambda: dist.monitored_barrier(
                group=self.group, timeout=self.timeout, wait_all_ranks=True)
                if gloo else dist.barrier(group=self.group))
        OpLog.end(rec)
        self.stats.wait_seconds += time.perf_counter() - t0

    @property
    def eval_wait_s(self) -> float:
        """How long a rank waits for rank 0's evaluation: longer than any peer timeout."""
        return max(self.timeout.total_seconds(), EVAL_WAIT_S)

    def _long_barrier(self, limit: datetime.timedelta) -> None:
        """A barrier whose every rank waits up to ``limit``.

        gloo's ``monitored_barrier(timeout=...)`` applies the limit on rank 0 only: the
        other ranks wait for rank 0's answer with the group's default timeout (issue 14),
        so a rank 0 evaluating longer than ``comm.timeout_s`` killed the run. Here every
        rank's receive is waited on with ``limit`` (gloo honours a per-wait timeout on p2p).
        """
        token = torch.zeros(1)
        if self.rank == 0:
            peers = range(1, self.world_size)
            for h in [dist.irecv(torch.zeros(1), self._global_ranks[r], group=self.group,
                                 tag=_BARRIER_TAG) for r in peers]:
                h.wait(limit)
            for h in [dist.isend(token, self._global_ranks[r], group=self.group, tag=_BARRIER_TAG)
                      for r in peers]:
                h.wait(limit)
        else:
            root = self._global_ranks[0]
            dist.isend(token, root, group=self.group, tag=_BARRIER_TAG).wait(limit)
            dist.irecv(torch.zeros(1), root, group=self.group, tag=_BARRIER_TAG).wait(limit)

    # ---- point to point --------------------------------------------------------------
    # gloo's TCP pairs read and write host memory only: its collectives stage CUDA tensors
    # through the CPU themselves, its send/recv do not (writev fails with "Bad address"),
    # so these four copy through a host buffer there. NCCL takes CUDA tensors as they are.
    def _host_staged(self, t: torch.Tensor) -> bool:
        return t.is_cuda and dist.get_backend(self.group) == "gloo"

    def send(self, x: torch.Tensor, dst: int, tag: int = 0) -> None:
        n = nbytes(x)
        wire = x.detach().cpu() if self._host_staged(x) else x
        self._timed("send", lambda: dist.send(wire, self._global_ranks[dst], group=self.group, tag=tag),
                    n, 0, peer=self._global_ranks[dst])

    def isend(self, x: torch.Tensor, dst: int, tag: int = 0) -> Handle:
        n = nbytes(x)
        wire = x.detach().cpu() if self._host_staged(x) else x     # the work item keeps it alive
        return self._start("send", lambda: dist.isend(wire, self._global_ranks[dst], group=self.group,
                                                      tag=tag), n, 0, result=x,
                           peer=self._global_ranks[dst])

    def recv(self, out: torch.Tensor, src: int | None = None, tag: int = 0,
             timeout_s: float | None = None) -> int:
        """Receive into ``out``; ``src=None`` takes any sender. Returns the sender's group rank.

        ``timeout_s``: a longer limit than the transport's (a wait on rank 0's evaluation).
        """
        n = nbytes(out)
        peer = None if src is None else self._global_ranks[src]
        wire = torch.empty_like(out, device="cpu") if self._host_staged(out) else out

        def receive() -> int:
            if timeout_s is None:
                return dist.recv(wire, peer, group=self.group, tag=tag)
            work = dist.irecv(wire, peer, group=self.group, tag=tag)
            work.wait(datetime.timedelta(seconds=timeout_s))
            got = work._source_rank() if peer is None else peer
            return got if self.group is None or peer is not None else \
                dist.get_global_rank(self.group, got)

        sender = self._timed("recv", receive, 0, n, peer=peer)
        if wire is not out:
            out.copy_(wire)
        return self._global_ranks.index(sender)

    def irecv(self, out: torch.Tensor, src: int | None = None, tag: int = 0) -> Handle:
        n = nbytes(out)
        peer = None if src is None else self._global_ranks[src]
        wire = torch.empty_like(out, device="cpu") if self._host_staged(out) else out
        work_box = {}

        def start():
            work_box["w"] = dist.irecv(wire, peer, group=self.group, tag=tag)
            return work_box["w"]

        def sender():
            if wire is not out:
                out.copy_(wire)
            if src is not None:
                return src
            got = work_box["w"]._source_rank()      # a group rank inside a subgroup (as recv)
            return self._global_ranks.index(got if self.group is None else
                                            dist.get_global_rank(self.group, got))

        return self._start("recv", start, 0, n, on_done=sender, peer=peer)

    # ---- groups ----------------------------------------------------------------------
    def subgroup(self, ranks: Sequence[int], backend: str | None = None) -> Transport | None:
        """A transport over a subset of the world (must be called by every rank).

        Returns None on ranks outside ``ranks``. Stats are shared with this transport.
        """
        ranks = sorted(int(r) for r in ranks)
        pg = self._guard("new_group", lambda: dist.new_group(ranks=ranks, backend=backend,
                                                             timeout=self.timeout))
        if self.global_rank not in ranks:
            return None
        sub = Transport(ranks.index(self.global_rank), len(ranks), self.timeout.total_seconds(),
                        group=pg, stats=self.stats, latency_ms=self.latency_s * 1000,
                        global_ranks=ranks, oplog=self.oplog)
        sub.store, sub.backend_name, sub.parent = self.store, self.backend_name, self
        self._subgroups.append(sub)
        return sub


class _Done:
    """A finished work item, for the single-rank fast path."""

    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
