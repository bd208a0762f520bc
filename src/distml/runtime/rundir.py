"""The run folder ``runs/<name>/``: chosen, checked for writability, and described."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from distml.errors import UserError
from distml.runtime.metrics import write_json_atomic


def _has_results(path: Path) -> bool:
    return any((path / f).exists() for f in ("summary.json", "checkpoints", "events-rank0.jsonl"))


def prepare_run_dir(name: str, out: str | os.PathLike | None, resume: bool,
                    root: str | os.PathLike = "runs") -> Path:
    """Pick and create the run folder.

    Without ``out``, a fresh ``runs/<name>`` (``runs/<name>-2``, ... if taken). An
    explicit ``out`` that already holds results is refused unless resuming.

    Raises:
        UserError: nothing to resume, results would be overwritten, or the folder is not
            writable (checked before any worker starts).
    """
    if resume:
        if out is None:
            path = Path(root) / name
        else:
            path = Path(out)
        if not (path / "checkpoints" / "latest.json").exists():
            raise UserError(f"--resume: no checkpoint in {path}/checkpoints; run with "
                            "train.checkpoint_every > 0 first, or drop --resume")
    elif out is not None:
        path = Path(out)
        if _has_results(path):
            raise UserError(f"{path} already holds a run; pass --resume to continue it or "
                            "choose another --out")
    else:
        path = Path(root) / name
        n = 2
        while _has_results(path):
            path = Path(root) / f"{name}-{n}"
            n += 1
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)       # a full disk fails here, before training
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)      # a full disk keeps no half-written probe
        raise UserError(f"cannot write to the run folder {path}: {e.strerror or e}; choose "
                        "another --out") from None
    return path


def write_config(path: Path, config: dict) -> None:
    write_json_atomic(path / "config.json", config)
