"""Contiguous blocks of a sequence of weighted items, balanced by weight.

Used to cut a model into pipeline stages (layers weighted by parameters or time) and
into Streaming DiLoCo's fragments (parameter tensors weighted by size): the same
problem — k non-empty contiguous parts whose largest sum is as small as possible.
"""

from __future__ import annotations

import math


def balance(weights: list[float], k: int) -> list[int]:
    """Cut ``weights`` into ``k`` non-empty contiguous parts minimizing the largest sum
    (exact dynamic programme, O(k n²): n is a count of layers or tensors).

    Returns:
        the k+1 boundaries ``[0, b1, ..., n]``.

    Raises:
        ValueError: fewer items than parts, or k < 1.
    """
    n = len(weights)
    if k < 1 or n < k:
        raise ValueError(f"{n} items cannot make {k} non-empty contiguous parts")
    pre = [0]
    for w in weights:
        pre.append(pre[-1] + w)
    inf = math.inf
    # best[j][i]: the smallest max-part over the first i items in j parts; cut[j][i]: last cut
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for c in range(j - 1, i):
                v = max(best[j - 1][c], pre[i] - pre[c])
                if v < best[j][i]:
                    best[j][i], cut[j][i] = v, c
    bounds = [n]
    for j in range(k, 0, -1):
        bounds.append(cut[j][bounds[-1]])
    return bounds[::-1]
