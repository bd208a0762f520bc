"""Atomic, verified checkpoints: one file per rank plus a commit marker.

A checkpoint at step S is complete only when ``latest.json`` names it; every rank writes
its own file through a temp file and a rename, the ranks meet at a barrier, then rank 0
writes the marker. A crash at any point leaves the previous checkpoint intact. Each
file's SHA-256 is recorded beside it and checked on load, so a truncated or corrupted
file is reported instead of loaded.

Resuming, every rank loads its own file at the step *rank 0* committed, which rank 0
tells the others (:func:`agree_on_resume`): under torchrun each host may keep its ranks'
files in its own run folder, where only rank 0's host has the marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from distml.errors import CheckpointError
from distml.runtime.metrics import write_json_atomic


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` through a temp file and a rename: ``path`` is either the old or the new file.

    Raises:
        CheckpointError: the write failed (a full disk, a read-only folder); the temp file
            is removed and ``path`` is left as it was.
    """
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; free disk space or choose "
                              "another --out (earlier checkpoints are kept)") from None


def save_torch_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` through a temp file and a rename (for model.pt and checkpoints)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    save_bytes_atomic(path, buf.getvalue())


class Checkpoints:
    """The checkpoint folder of one run.

    Args:
        folder: ``runs/<name>/checkpoints``.
        rank: this process's rank (each rank owns its own file).
        keep: how many committed checkpoints to keep.
    """

    def __init__(self, folder: Path, rank: int, keep: int = 2):
        self.folder = Path(folder)
        self.rank = rank
        self.keep = keep
        self._pinned: int | None = None

    def _file(self, step: int, rank: int | None = None) -> Path:
        return self.folder / f"step{step:09d}-rank{self.rank if rank is None else rank}.pt"

    def write(self, step: int, state: dict[str, Any]) -> None:
        """Write this rank's state for ``step`` (not yet committed)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_bytes_atomic(self._file(step), data)
            write_json_atomic(self._file(step).with_suffix(".json"),
                              {"step": step, "rank": self.rank, "bytes": len(data), "sha256": _sha256(data)})
        except OSError as e:   # not committed: latest.json still names the previous checkpoint
            raise CheckpointError(f"cannot write checkpoint {self._file(step)}: {e.strerror or e}; "
                                  "free disk space or choose another --out (earlier checkpoints "
                                  "are kept)") from None
        self._prune_own()

    def _prune_own(self) -> None:
        """Drop this rank's files older than its ``keep + 1`` newest steps.

        Rank 0's commit prunes a shared folder; this keeps a host's own folder (torchrun,
        one folder per host) from growing. One step more than ``keep`` is kept: a rank
        may run a checkpoint ahead of rank 0's marker (asynchronous paces).
        """
        own = sorted({int(p.name[4:13]) for p in self.folder.glob(f"step*-rank{self.rank}.pt")})
        for old in own[:-(self.keep + 1)]:
            for p in (self._file(old), self._file(old).with_suffix(".json")):
                p.unlink(missing_ok=True)

    def commit(self, step: int, world: int) -> None:
        """Rank 0, after every rank wrote: mark ``step`` as the latest and prune old ones."""
        write_json_atomic(self.folder / "latest.json", {"step": step, "world": world})
        steps = sorted({int(p.name[4:13]) for p in self.folder.glob("step*-rank*.pt")})
        for old in steps[:-self.keep]:
            for p in self.folder.glob(f"step{old:09d}-rank*"):
                p.unlink(missing_ok=True)

    def pin(self, step: int | None) -> None:
        """Resume from ``step`` (rank 0's committed step) whatever this folder's marker says."""
        self._pinned = step

    def latest_step(self) -> int | None:
        """The step to resume from: the pinned one, else the one ``latest.json`` names."""
        if self._pinned is not None:
            return self._pinned
        marker = self.folder / "latest.json"
        if not marker.exists():
            return None
        try:
            return int(json.loads(marker.read_text())["step"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{marker} is corrupt ({e}); delete it to start over") from None

    def load(self, step: int) -> dict[str, Any]:
        """Load and verify this rank's state at ``step``.

        Raises:
            CheckpointError: the file is missing, truncated or does not match its checksum.
        """
        path = self._file(step)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise CheckpointError(f"checkpoint {path} is missing (was the run resumed with a "
                                  "different number of workers?)")
        try:
            meta = json.loads(meta_path.read_text())
            size, digest = int(meta["bytes"]), str(meta["sha256"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{meta_path} is corrupt ({e}); delete this checkpoint and resume "
                                  "from an earlier one") from None
        data = path.read_bytes()
        if len(data) != size or _sha256(data) != digest:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({len(data)} bytes, "
                                  f"expected {size}); delete it and resume from an earlier one")
        return load_tensors(io.BytesIO(data), path)


def load_tensors(f, path: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: never unpickles arbitrary objects.

    Raises:
        CheckpointError: the file holds other objects than tensors and plain containers
            (not written by distml, or tampered with), or is not a torch archive.
    """
    try:
        with warnings.catch_warnings():   # torch warns about foreign pickles; the error says enough
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers; "
                              "refusing to unpickle it (it was not written by distml, or was "
                              "tampered with)") from None
    except Exception as e:  # torch raises several types for bad archives
        raise CheckpointError(f"{path} cannot be read: {squash(e)}") from None


def squash(e: BaseException) -> str:
    """An exception's (often multi-line) message as one line, for a one-line error."""
    return " ".join(str(e).split()) or type(e).__name__


def agree_on_resume(transport, checkpoints: Checkpoints, restart_count: int = 0) -> tuple[int | None, int]:
    """Rank 0's committed step and the highest restart count of any rank, learnt by every rank.

    Called right after joining, before any other collective. Under torchrun each agent
    counts only the restarts it made itself (a healthy host's count stays 0 when a peer
    host's worker failed), so the highest count is the run's. The exchange is not counted
    in the run's communication figures.

    Raises:
        CheckpointError: rank 0's marker is corrupt (every rank raises it).
    """
    mine: dict = {"restarts": int(restart_count)}
    if transport.rank == 0:
        try:
            mine["step"] = checkpoints.latest_step()
        except CheckpointError as e:
            mine["error"] = str(e)
    before = transport.stats.snapshot()
    views = transport.all_gather_json(mine)
    transport.stats.load_snapshot(before)
    if "error" in views[0]:
        raise CheckpointError(f"rank 0: {views[0]['error']}")
    return views[0].get("step"), max(v["restarts"] for v in views)
