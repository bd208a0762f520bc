"""Compression codecs (docs/design.md §2.4 spatial frequency), found through ``CODECS``.

A Compressor is one message (compress → send → decompress) and works over any topology;
a Reducer (PowerSGD) is a multi-round collective. :func:`build_codec` turns the
``[comm]`` section into one codec (a chain, maybe wrapped in error feedback);
:func:`with_momentum_correction` (DGC) wraps either kind so it carries the velocity; and
:func:`reduce_mean` is how every algorithm reduces a tensor through it.
"""

from __future__ import annotations

from typing import Any

from distml.errors import ConfigError
from distml.registry import Registry

CODECS = Registry("codec")

from distml.comm.compress.base import (  # noqa: E402
    Chain, Compressor, ErrorFeedback, Reducer, chain, with_error_feedback)
from distml.comm.compress import bf16, fp16, powersgd, qsgd, randomk, sign, threshold, topk  # noqa: E402,F401,E501
from distml.comm.compress.momentum import (  # noqa: E402
    MomentumCorrection, MomentumCorrectionReducer, with_momentum_correction)
from distml.comm.compress.reduce import PendingReduce, init_state, reduce_mean, start_reduce  # noqa: E402


def build_codec(specs: list[Any], error_feedback: bool = False, seed: int = 0,
                rank: int = 0) -> Compressor | Reducer | None:
    """One codec from ``[comm] codec`` (one spec or a list = a chain) and ``error_feedback``.

    Raises:
        ConfigError: unknown names or parameters, a Reducer chained with anything, error
            feedback on a Reducer (it has its own) or on a lossless chain.
    """
    if not specs:
        if error_feedback:
            raise ConfigError("comm.error_feedback needs a comm.codec; remove it or add a codec")
        return None
    codecs = [CODECS.build(s, seed=seed, worker_rank=rank) for s in specs]
    reducers = [c.describe() for c in codecs if isinstance(c, Reducer)]
    if reducers and len(codecs) > 1:
        raise ConfigError(f"comm.codec: {reducers[0]} is a multi-round Reducer and must be the "
                          "only codec; chains compose Compressors (e.g. [topk, fp16])")
    if reducers:
        if error_feedback:
            raise ConfigError(f"comm.error_feedback: {reducers[0]} keeps its own error feedback "
                              "(its error_feedback parameter); remove comm.error_feedback")
        return codecs[0]
    try:
        codec = chain(*codecs)
        return with_error_feedback(codec) if error_feedback else codec
    except ValueError as e:
        raise ConfigError(f"comm.codec: {e}") from None


__all__ = ["CODECS", "Chain", "Compressor", "ErrorFeedback", "MomentumCorrection",
           "MomentumCorrectionReducer", "PendingReduce", "Reducer", "build_codec", "chain",
           "init_state", "reduce_mean", "start_reduce", "with_error_feedback",
           "with_momentum_correction"]
