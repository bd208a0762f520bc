"""Name → factory registries: how every pluggable part is found from a config.

Each package owns its registry (``distml.models.MODELS``, ``distml.optim.OPTIMIZERS``,
...). A config names an entry as ``"name"`` or ``{name = "...", **params}``;
:meth:`Registry.build` checks the parameters against the factory's signature so that a
typo fails with the list of accepted parameters instead of a ``TypeError`` deep inside.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from distml.errors import ConfigError


def split_spec(spec: str | Mapping[str, Any], kind: str = "entry") -> tuple[str, dict[str, Any]]:
    """Return ``(name, params)`` of a spec given as a name or a ``{name=..., ...}`` table."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{kind} needs a 'name' (a string), got {spec!r}")
        return name, params
    raise ConfigError(f"{kind} must be a name or a table with 'name', got {spec!r}")


class Registry:
    """Named factories of one kind, with metadata (paper, flags) for ``distml list``.

    Args:
        kind: what the entries are, used in messages ("optimizer", "model", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: Callable[..., Any] | None = None, *, replace: bool = False,
                 **meta: Any):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            ConfigError: the name is taken and ``replace`` is false.
        """
        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and not replace and self._entries[name] is not target:
                raise ConfigError(f"{self.kind} '{name}' is already registered; "
                                  "pass replace=True to override it")
            self._entries[name] = target
            self._meta[name] = dict(meta)
            return target

        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'; registered: "
                              f"{', '.join(self.names()) or '(none)'}") from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def parameters(self, name: str) -> dict[str, Any]:
        """The factory's user-settable parameters and their defaults (``inspect.Parameter.empty`` if required)."""
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory
        out = {}
        for p in list(inspect.signature(target).parameters.values()):
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = p.default
        return out

    def build(self, spec: str | Mapping[str, Any], **context: Any) -> Any:
        """Build the entry a spec names.

        Args:
            spec: ``"name"`` or ``{"name": ..., **params}`` from the config.
            **context: arguments the caller supplies (``params=``, ``input_shape=``...);
                they are passed only if the factory accepts them.

        Raises:
            ConfigError: unknown name, unknown parameter, missing parameter, a value
                the factory rejects (its ``ValueError`` message is kept), or sizes too
                large to allocate.
        """
        name, params = split_spec(spec, self.kind)
        factory = self.get(name)
        accepted = self.parameters(name)
        takes_var_kw = _takes_var_keyword(factory)
        unknown = [k for k in params if k not in accepted and not takes_var_kw]
        if unknown:
            user_params = [k for k in accepted if k not in context]
            raise ConfigError(f"{self.kind} '{name}' has no parameter "
                              f"{', '.join(repr(u) for u in unknown)}; accepted: "
                              f"{', '.join(user_params) or '(none)'}")
        kwargs = {k: v for k, v in context.items() if k in accepted or takes_var_kw}
        clash = set(kwargs) & set(params)
        if clash:
            raise ConfigError(f"{self.kind} '{name}': {', '.join(sorted(clash))} is set by "
                              "distml and cannot be given in the config")
        missing = [k for k, d in accepted.items()
                   if d is inspect.Parameter.empty and k not in params and k not in kwargs]
        if missing:
            raise ConfigError(f"{self.kind} '{name}' needs parameter(s): {', '.join(missing)}")
        try:
            return factory(**kwargs, **params)
        except ConfigError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise ConfigError(f"{self.kind} '{name}': {e}") from e
        except (MemoryError, RuntimeError) as e:
            # sizes too large to allocate (torch reports a failed CPU allocation as a RuntimeError)
            if isinstance(e, RuntimeError) and "allocate" not in str(e):
                raise
            raise ConfigError(f"{self.kind} '{name}' does not fit in memory with "
                              f"{params or 'its defaults'}; choose smaller sizes") from e


def _takes_var_keyword(factory: Callable[..., Any]) -> bool:
    target = factory.__init__ if inspect.isclass(factory) else factory
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())
