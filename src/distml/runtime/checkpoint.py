"""Atomic, verified checkpoints: one file per rank plus a commit marker.

A checkpoint at step S is complete only when ``latest.json`` names it; every rank writes
its own file through a temp file and a rename, the ranks meet at a barrier, then rank 0
writes the marker. A crash at any point leaves the previous checkpoint intact. Each
file's SHA-256 is recorded beside it and checked on load, so a truncated or corrupted
file is reported instead of loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from distml.errors import CheckpointError
from distml.runtime.metrics import write_json_atomic


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    def _file(self, step: int, rank: int | None = None) -> Path:
        return self.folder / f"step{step:09d}-rank{self.rank if rank is None else rank}.pt"

    def write(self, step: int, state: dict[str, Any]) -> None:
        """Write this rank's state for ``step`` (not yet committed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        save_bytes_atomic(self._file(step), data)
        write_json_atomic(self._file(step).with_suffix(".json"),
                          {"step": step, "rank": self.rank, "bytes": len(data), "sha256": _sha256(data)})

    def commit(self, step: int, world: int) -> None:
        """Rank 0, after every rank wrote: mark ``step`` as the latest and prune old ones."""
        write_json_atomic(self.folder / "latest.json", {"step": step, "world": world})
        steps = sorted({int(p.name[4:13]) for p in self.folder.glob("step*-rank*.pt")})
        for old in steps[:-self.keep]:
            for p in self.folder.glob(f"step{old:09d}-rank*"):
                p.unlink(missing_ok=True)

    def latest_step(self) -> int | None:
        marker = self.folder / "latest.json"
        if not marker.exists():
            return None
        try:
            return int(json.loads(marker.read_text())["step"])
        except (ValueError, KeyError, json.JSONDecodeError) as e:
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
        meta = json.loads(meta_path.read_text())
        data = path.read_bytes()
        if len(data) != meta["bytes"] or _sha256(data) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({len(data)} bytes, "
                                  f"expected {meta['bytes']}); delete it and resume from an earlier one")
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:  # torch raises several types for bad archives
            raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
