"""The optimizer and schedule registries and the range checks their factories share."""

from __future__ import annotations

import math

from distml.errors import ConfigError
from distml.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


def _number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{owner}: {name} must be a number, got {value!r}")
    return float(value)


def positive(owner: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is > 0.

    Raises:
        ConfigError: otherwise, e.g. "sgd: lr must be > 0, got -1".
    """
    v = _number(owner, name, value)
    if not v > 0 or math.isinf(v):
        raise ConfigError(f"{owner}: {name} must be > 0, got {value!r}")
    return v


def non_negative(owner: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is >= 0 (and finite).

    Raises:
        ConfigError: otherwise.
    """
    v = _number(owner, name, value)
    if not 0 <= v < math.inf:
        raise ConfigError(f"{owner}: {name} must be >= 0, got {value!r}")
    return v


def unit_interval(owner: str, name: str, value: object, closed_right: bool = False) -> float:
    """Return ``value`` as a float if it is in [0, 1) (or [0, 1] with ``closed_right``).

    Raises:
        ConfigError: otherwise, e.g. "momentum must be in [0, 1), got 1.5".
    """
    v = _number(owner, name, value)
    ok = 0 <= v <= 1 if closed_right else 0 <= v < 1
    if not ok:
        raise ConfigError(f"{owner}: {name} must be in [0, 1{']' if closed_right else ')'}, "
                          f"got {value!r}")
    return v


def int_at_least(owner: str, name: str, value: object, low: int) -> int:
    """Return ``value`` if it is an int >= ``low``.

    Raises:
        ConfigError: otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return value
