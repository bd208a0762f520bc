"""Typed run configuration, read from TOML.

Every pluggable part is a *spec*: a name or ``{name = "...", **params}`` resolved through
a registry when the run is built, so new entries need no change here. Sections that are
not specs (``[train]``, ``[comm]``) are closed: an unknown key fails with the list of the
valid ones.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10: the same parser, as a package
    import tomli as tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distml.errors import ConfigError

Spec = str | dict[str, Any]


class _Section(BaseModel):
    # inf/nan pass `gt=0` checks (inf epochs, an inf timeout or latency would hang a run)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _SpecSection(BaseModel):
    """A section that is itself a spec: ``name`` plus the entry's parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    def spec(self, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        """The section as a registry spec, minus the keys the runtime interprets itself."""
        out = {"name": self.name, **(self.model_extra or {})}
        for key in drop:
            out.pop(key, None)
        return out


class DataConfig(_Section):
    source: Spec = "fashion_mnist"
    partition: Spec = "shuffle_split"
    batch_size: int = Field(64, ge=1)
    test_batch_size: int = Field(1000, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)  # online sources: the length of an "epoch"
    lr_scaling: Literal["none", "linear"] = "none"

    @field_validator("source", "partition", mode="before")
    @classmethod
    def _default_name(cls, v: Any, info: Any) -> Any:
        # `--set data.source.path=...` on a default source builds a table without a name
        if isinstance(v, dict) and "name" not in v:
            return {"name": cls.model_fields[info.field_name].default, **v}
        return v


class ModelConfig(_SpecSection):
    name: str = "cnn"
    loss: Spec = "auto"

    def spec(self, drop: tuple[str, ...] = ("loss",)) -> dict[str, Any]:
        return super().spec(drop)


class OptimConfig(_SpecSection):
    name: str = "sgd"
    schedule: Spec = "constant"

    def spec(self, drop: tuple[str, ...] = ("schedule",)) -> dict[str, Any]:
        return super().spec(drop)


class AlgorithmConfig(_SpecSection):
    name: str = "sync_sgd"


class CommConfig(_Section):
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = Field(60.0, gt=0, le=604800)       # at most a week
    codec: list[Spec] = Field(default_factory=list)
    error_feedback: bool = False
    latency_ms: float = Field(0.0, ge=0, le=60000)       # injected per message
    # "auto": pin gloo's event-loop and work threads to different CPUs when every local
    # rank can have a CPU (distml.comm.placement); "off": leave them to the OS
    place_threads: Literal["auto", "off"] = "auto"

    @field_validator("codec", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v


def tensorboard_installed() -> bool:
    """Whether ``torch.utils.tensorboard`` can write event files (it needs the ``tensorboard`` package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    eval_every: int = Field(0, ge=0)          # steps; 0 = at the end of every epoch
    log_every: int = Field(10, ge=1)
    target_accuracy: float | None = Field(None, gt=0, le=1)
    stop_at_target: bool = False
    checkpoint_every: int = Field(0, ge=0)    # steps; 0 = only the final model
    threads_per_worker: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"   # float64: exact comparisons, convex solvers
    # autocast of forward + loss; master weights, gradients and codecs stay float32.
    # fp16 also scales the loss (torch.amp.GradScaler) and needs CUDA
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    clip_grad_norm: float | None = Field(None, gt=0)   # on the gradient the optimizer steps with
    accumulate_steps: int = Field(1, ge=1)    # micro-batches per optimizer step (a step = k batches)
    progress: bool = True
    # TensorBoard event files in runs/<name>/tensorboard/; None: when the package is installed
    tensorboard: bool | None = None

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, v: bool | None) -> bool | None:
        if v and not tensorboard_installed():
            raise ValueError("train.tensorboard = true needs the tensorboard package "
                             "(pip install tensorboard), or set it to false")
        return v

    @model_validator(mode="after")
    def _precision_is_below_float32(self) -> TrainConfig:
        if self.precision != "fp32" and self.dtype == "float64":
            raise ValueError(f"precision = {self.precision!r} autocasts float32 weights; with "
                             "dtype = 'float64' leave precision = 'fp32'")
        return self


class StragglerConfig(_Section):
    ranks: list[int] = Field(min_length=1)     # worker ranks that are always slow
    slowdown: float = Field(3.0, ge=1)         # their steps take this many times longer


class DelayConfig(_Section):
    name: Literal["exponential", "bernoulli"]
    mean: float = Field(1.0, gt=0)             # exponential: mean extra time, in step times
    p: float = Field(1 / 3, gt=0, le=1)        # bernoulli: chance that a step is slow
    slowdown: float = Field(3.0, ge=1)         # bernoulli: a slow step takes this many times longer
    ranks: list[int] | None = None             # which workers (default: all)


class CrashConfig(_Section):
    rank: int = Field(ge=0)                    # this process exits abruptly (tests of failure handling)
    after_s: float | None = Field(None, gt=0)  # seconds after joining the world, or
    step: int | None = Field(None, ge=0)       # before this step of the worker loop

    @model_validator(mode="after")
    def _one_moment(self) -> CrashConfig:
        if (self.after_s is None) == (self.step is None):
            raise ValueError("give exactly one of after_s (seconds after joining) and step "
                             "(before that step)")
        return self


class HangConfig(_Section):
    rank: int = Field(ge=0)                    # this worker stops for good (tests of hang reports)
    step: int = Field(ge=0)                    # from this step on (it stops before the step)


class SlowEvalConfig(_Section):
    seconds: float = Field(gt=0)               # rank 0 sleeps this long in every evaluation


class FaultsConfig(_Section):
    """Injected faults (runtime/faults.py): stragglers, random delays, crashes, hangs,
    slow evaluations."""

    straggler: StragglerConfig | None = None
    delay: DelayConfig | None = None
    compute_s: float | None = Field(None, gt=0)   # pad each step's compute to this (a sleep)
    crash: CrashConfig | None = None
    hang: HangConfig | None = None
    slow_eval: SlowEvalConfig | None = None       # rank 0's evaluations take this much longer
    # what the group does when a worker dies (runtime/elastic.py, docs/faults.md): stop (and
    # restart the whole group when --max-restarts is given), restart (needs --max-restarts),
    # or continue among the survivors while at least min_workers are left
    on_worker_loss: Literal["stop", "restart", "continue"] = "stop"
    min_workers: int = Field(1, ge=1)
    # "continue" with --max-restarts: after a loss, rank 0 holds the group at its first
    # join point up to this long for the replacement's request (0: never waits)
    join_wait_s: float = Field(0.0, ge=0)


class RunConfig(_Section):
    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**32)       # torch and numpy seeds are derived from it
    workers: int = Field(2, ge=1, le=1024)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    comm: CommConfig = Field(default_factory=CommConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)

    @model_validator(mode="after")
    def _name_is_a_folder_name(self) -> RunConfig:
        if not self.name or any(c in self.name for c in "/\\\0") or self.name in (".", ".."):
            raise ValueError(f"name must be usable as a folder name, got {self.name!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def _format_validation_error(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = _section_for(err["loc"][:-1])
        valid = ", ".join(section.model_fields) if section else "?"
        return f"{where}: unknown key '{loc}'; valid keys here: {valid}"
    msg = err["msg"]
    if "input" in err and kind not in ("missing",):
        msg += f", got {err['input']!r}"
    return f"{where}: {loc}: {msg}"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        # an optional sub-section (`X | None`) names its section type among its arguments
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type)
                    and issubclass(a, BaseModel)), ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_config(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Validate a config dict (as read from TOML).

    Raises:
        ConfigError: with one line naming the key, the problem and the valid choices.
    """
    _check_finite(data, where)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, where)) from None


def _check_finite(node: Any, where: str, path: str = "") -> None:
    """Refuse inf/nan anywhere: the config travels to workers as JSON, which has neither
    (a parameter's inf would arrive as null), and no distml setting means anything there."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where}: {path or '(top level)'}: must be a finite number, got {node}")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        _check_finite(value, where, f"{path}.{key}" if path and isinstance(key, str)
                      else f"{path}[{key}]" if path else str(key))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict; syntax errors name the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {p}: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: TOML syntax error: {e}") from None


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_document(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``include = ["base.toml", ...]`` files merged in.

    Included paths are relative to the including file; they apply in order, and the
    including file's own keys override them. A file that includes itself, directly or
    through others, is refused.

    Raises:
        ConfigError: unreadable or malformed files, a bad ``include`` or a cycle.
    """
    p = Path(path)
    key = p.resolve()
    if key in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain, key))
        raise ConfigError(f"{p}: include cycle: {cycle}")
    data = load_toml(p)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{p}: include must be a file name or a list of them, got {includes!r}")
    merged: dict[str, Any] = {}
    for name in includes:
        merged = merge(merged, load_document(p.parent / name, (*_chain, key)))
    return merge(merged, data)


# a bare word on the right of ``--set``: a name or a path, taken as a string unquoted
_BARE_WORD = re.compile(r"[A-Za-z_/~][^\s\[\]{}\"'=,]*")


def parse_value(text: str, key: str = "") -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value.

    A bare word (``mlp``, ``data/train.csv``) is a string; anything else that is not
    valid TOML (``0.1.2``, ``[1,2``, an unclosed quote) is an error, not a string.

    Raises:
        ConfigError: a malformed value, naming ``--set``.
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        if _BARE_WORD.fullmatch(text):
            return text
        raise ConfigError(f"--set {key}={text}: not a valid TOML value ({e}); quote strings, "
                          f"e.g. {key}='...'") from None


def _override_key(item: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.1), got {item!r}")
    if any(not p for p in key.split(".")):
        raise ConfigError(f"--set key has an empty part: {key!r}")
    return key, raw.strip()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values in TOML syntax) to a config dict.

    Raises:
        ConfigError: an override without ``=``, a malformed value, or one that descends
            into a non-table.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, raw = _override_key(item)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str):     # a spec given as a bare name becomes a table
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value, not a table")
            node = child
        node[parts[-1]] = parse_value(raw, key)
    return out


def _optimizer_name(data: dict[str, Any]) -> Any:
    optim = data.get("optim")
    return optim.get("name", "sgd") if isinstance(optim, dict) else optim if optim is not None else "sgd"


def drop_foreign_optimizer_params(before: dict[str, Any], after: dict[str, Any],
                                  accepted: Callable[[str], Collection[str] | None]) -> list[str]:
    """After ``--set optim.name=NEW``, remove the old optimizer's parameters NEW does not take.

    ``accepted(name)`` gives an optimizer's parameter names (None: unknown name, left to
    the registry's own error). Parameters set by ``--set`` itself are kept (and refused
    by the registry if NEW does not take them). Returns the removed keys.
    """
    old, new = _optimizer_name(before), _optimizer_name(after)
    optim = after.get("optim")
    if old == new or not isinstance(optim, dict) or not isinstance(new, str):
        return []
    takes = accepted(new)
    if takes is None:
        return []
    old_keys = set(before["optim"]) if isinstance(before.get("optim"), dict) else set()
    dropped = [k for k in optim if k in old_keys and k not in ("name", "schedule") and k not in takes
               and optim[k] == before["optim"].get(k)]
    for k in dropped:
        del optim[k]
    return dropped


def _blame(e: ConfigError | ValidationError, where: str, overrides: list[str]) -> str:
    """The validation error, naming the ``--set`` that set the offending key if one did."""
    if not isinstance(e, ValidationError):
        return str(e)
    loc = [str(p) for p in e.errors()[0]["loc"]]
    for item in reversed(overrides):
        parts = _override_key(item)[0].split(".")
        n = min(len(parts), len(loc))
        if n and parts[:n] == loc[:n]:
            return _format_validation_error(e, f"--set {item.strip()}")
    return _format_validation_error(e, where)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, where: str = "config",
                optimizer_params: Callable[[str], Collection[str] | None] | None = None) -> RunConfig:
    """Load a run config from a TOML file (with its includes) or a dict, then apply
    ``--set`` overrides.

    Args:
        optimizer_params: an optimizer's parameter names by name; when given, an
            ``optim.name`` override drops the old optimizer's parameters the new one
            does not take, with a one-line note on stderr.

    Raises:
        ConfigError: one line, naming the file or the ``--set`` that caused it.
    """
    overrides = overrides or []
    data = load_document(path) if path is not None else copy.deepcopy(base or {})
    where = str(path) if path is not None else where
    updated = apply_overrides(data, overrides)
    if optimizer_params is not None:
        dropped = drop_foreign_optimizer_params(data, updated, optimizer_params)
        if dropped:
            print(f"distml: note: optim.name changed to '{_optimizer_name(updated)}': dropped "
                  f"{', '.join(dropped)} (parameters of '{_optimizer_name(data)}' it does not take)",
                  file=sys.stderr)
    _check_finite(data, where)
    _check_finite(updated, "--set")
    try:
        return RunConfig.model_validate(updated)
    except ValidationError as e:
        raise ConfigError(_blame(e, where, overrides)) from None
