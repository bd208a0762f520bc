"""What a Python-API run's own model, loss and data are, recorded so ``distml evaluate``
can rebuild them (an importable factory) or say in one line why it cannot."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from distml.errors import UserError

_SCRIPT_MODULES = ("__main__", "__mp_main__")


def importable_path(obj: Any) -> str | None:
    """``module:qualname`` when ``obj`` is a class or function another process can import
    by name (not defined in the running script, not a lambda or local), else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module in _SCRIPT_MODULES or "<" in qualname:
        return None
    try:
        return f"{module}:{qualname}" if import_path(f"{module}:{qualname}") is obj else None
    except UserError:
        return None


def import_path(path: str) -> Any:
    """The object named by ``module:qualname``.

    Raises:
        UserError: the module or the name cannot be imported.
    """
    module, _, qualname = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import {path} ({e})") from None
    return obj


def _what(obj: Any) -> str:
    if isinstance(obj, nn.Module):
        return f"an nn.Module instance ({type(obj).__name__}: its constructor arguments are not recorded)"
    name = getattr(obj, "__qualname__", type(obj).__name__)
    where = getattr(obj, "__module__", "?")
    return f"{name} from {where} (not importable by name)"


def describe_user_parts(model: Any, loss: Any, data_given: bool) -> dict[str, Any]:
    """The record written as ``user_parts.json`` in the run folder."""
    out: dict[str, Any] = {"data": "python" if data_given else None}
    for key, obj in (("model", model), ("loss", loss)):
        if obj is None:
            out[key] = None
            continue
        path = None if isinstance(obj, nn.Module) else importable_path(obj)
        out[key] = {"factory": path} if path else {"factory": None, "given": _what(obj)}
    return out


def rebuild_user_parts(record: dict[str, Any], where: str) -> tuple[Any, Any]:
    """The model factory and loss a run recorded (None where the config names them).

    Raises:
        UserError: one line saying why ``distml evaluate`` cannot rebuild the run.
    """
    why = []
    if record.get("data"):
        why.append("its training and test data were Python objects")
    for key in ("model", "loss"):
        entry = record.get(key)
        if entry and not entry.get("factory"):
            why.append(f"its {key} was {entry.get('given', 'not importable')}")
    if why:
        raise UserError(f"{where} was trained through the Python API and distml evaluate cannot "
                        f"rebuild it: {'; '.join(why)}; evaluate it in Python, or pass a model "
                        "factory defined in an importable module (module:function) and data "
                        "named in the config")
    return tuple(import_path(record[k]["factory"]) if record.get(k) else None
                 for k in ("model", "loss"))
