"""The run folder ``runs/<name>/``: chosen, checked for writability, and described."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from distml.errors import UserError
from distml.runtime.metrics import write_json_atomic

USER_PARTS = "user_parts.json"  # how a Python-API run's own model and data can be rebuilt


def _has_results(path: Path) -> bool:
    return any((path / f).exists() for f in ("summary.json", "checkpoints", "events-rank0.jsonl"))


def choose_run_dir(name: str, out: str | os.PathLike | None, resume: bool,
                   root: str | os.PathLike = "runs") -> Path:
    """See :func:`_choose_run_dir`; a path the OS cannot take at all is a UserError too."""
    try:
        if "\0" in os.fspath(out or root):      # pathlib reads it as "does not exist"
            raise ValueError("embedded null byte")
        return _choose_run_dir(name, out, resume, root)
    except (OSError, ValueError) as e:       # a NUL byte, a name too long, ...
        raise UserError(f"cannot use the run folder {str(out or root)!r}: {e}; choose another --out") from None


def _choose_run_dir(name: str, out: str | os.PathLike | None, resume: bool,
                    root: str | os.PathLike = "runs") -> Path:
    """The run folder a run will use, without creating it.

    Without ``out``, ``runs/<name>``; when that already holds a run, the first free
    ``runs/<name>-2``, ``runs/<name>-3``, ... (a new run never overwrites an old one). An
    explicit ``out`` that already holds results is refused unless resuming.

    Raises:
        UserError: nothing to resume, or results would be overwritten.
    """
    if resume:
        path = Path(root) / name if out is None else Path(out)
        if not (path / "checkpoints" / "latest.json").exists():
            raise UserError(f"--resume: no checkpoint in {path}/checkpoints; run with "
                            "train.checkpoint_every > 0 first, or drop --resume")
        return path
    if out is not None:
        path = Path(out)
        if _has_results(path):
            raise UserError(f"{path} already holds a run; pass --resume to continue it or "
                            "choose another --out")
        return path
    path = Path(root) / name
    n = 2
    while _has_results(path):
        path = Path(root) / f"{name}-{n}"
        n += 1
    return path


def check_run_dir_writable(path: Path) -> None:
    """Refuse a run folder that could not be created or written (the dry run's check;
    :func:`prepare_run_dir` also writes a probe).

    Raises:
        UserError: the folder, or the nearest existing folder above it, is not a
            writable directory.
    """
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        usable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot use the run folder {path}: {e}; choose another --out") from None
    if not usable:
        what = ("is not a folder" if not existing.is_dir() else
                "is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else
                "is not writable")
        raise UserError(f"cannot write to the run folder {path}: {existing} {what}; choose "
                        "another --out")


def prepare_run_dir(name: str, out: str | os.PathLike | None, resume: bool,
                    root: str | os.PathLike = "runs") -> Path:
    """Pick (:func:`choose_run_dir`) and create the run folder.

    Raises:
        UserError: nothing to resume, results would be overwritten, or the folder is not
            writable (checked before any worker starts).
    """
    path = choose_run_dir(name, out, resume, root)
    check_run_dir_writable(path)
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


def write_user_parts(path: Path, description: dict) -> None:
    write_json_atomic(path / USER_PARTS, description)


def rank_log_path(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its log (the worker, hang reports, ``distml doctor``)."""
    return Path(run_dir) / "logs" / f"rank{rank}.log"
