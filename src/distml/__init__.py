"""distml: distributed machine learning with the whole menu of strategies.

Python API: :func:`run`, :func:`plan`, :func:`wrap`, :func:`init`, :func:`register`
(imported on first use, so ``import distml.partition`` stays light).
"""

__version__ = "0.1.0"

_API = ("run", "plan", "wrap", "init", "register", "DistributedOptimizer")


def __getattr__(name: str):
    if name in _API:
        from distml import api
        return getattr(api, name)
    raise AttributeError(f"module 'distml' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
