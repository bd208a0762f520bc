"""Generators with a known truth, offline (a fixed set) or online (an endless stream).

Kinds: linear regression, logistic regression (dense and sparse features, the sparse
ones optionally with Zipf-distributed feature frequencies, as words in text), Gaussian
mixtures and a teacher MLP (Gardner & Derrida 1989; the student-teacher setting).
Everything is drawn from ``torch.Generator`` objects seeded by a hash of
``(seed, stream, ...)``: the truth, the offline training set, the test set and every
online batch ``(rank, epoch, step)`` have their own stream, so an online batch is a pure
function of its coordinates (reproducible, resumable, independent across ranks).
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.sparse
import torch

from distml.errors import ConfigError
from distml.partition.base import SOURCES, ArrayData, DataInfo, Source, seed_of

KINDS = ("linear_regression", "logistic_regression", "sparse_logistic", "gaussian_mixture",
         "teacher_mlp")
_TRUTH, _TRAIN, _TEST, _ONLINE = 1, 2, 3, 4
_CHUNK = 4096  # offline sets are drawn in chunks so sparse ones never exist densely in full


def _gen(*ints: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*ints))


def _check_fits_memory(kind: str, n: int, dim: int, density: float) -> None:
    """Refuse an offline set that cannot fit in this machine's memory before drawing it
    (drawing chunk by chunk would otherwise run until the machine runs out)."""
    per_sample = (12 * density * dim if kind == "sparse_logistic" else 4 * dim) + 8
    need = 2 * n * per_sample                   # the chunks, then their concatenation
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # not on Linux/macOS: no check
        return
    if need > have:
        raise ConfigError(f"synthetic data of {n} samples x {dim} features needs about "
                          f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB; "
                          "lower n_train, n_test or dim (or use mode='online')")


def _zipf_frequencies(dim: int, mean: float, skew: float) -> torch.Tensor:
    """``p_j = min(1, c·(j+1)^−skew)`` with ``c`` found by bisection so that ``mean(p) = mean``."""
    rank_weight = torch.arange(1, dim + 1, dtype=torch.float64) ** -skew
    lo, hi = 0.0, 1.0 / float(rank_weight[-1])       # hi: every p_j = 1, mean 1 >= mean
    for _ in range(200):
        c = 0.5 * (lo + hi)
        if float((c * rank_weight).clamp(max=1.0).mean()) < mean:
            lo = c
        else:
            hi = c
    return (hi * rank_weight).clamp(max=1.0).float()


class Synthetic(Source):
    """A synthetic data source with its truth exposed.

    Args:
        kind: linear_regression | logistic_regression | sparse_logistic |
            gaussian_mixture | teacher_mlp.
        mode: "offline" (a fixed training set drawn before training) or "online"
            (``batch()`` draws fresh samples forever).
        n_train: training set size (offline).
        n_test: test set size (both modes; drawn from its own stream).
        dim: number of features.
        num_classes: classes of gaussian_mixture / teacher_mlp (logistic kinds are binary).
        noise: linear_regression: std of the Gaussian target noise; gaussian_mixture: std
            of each component; logistic kinds and teacher_mlp: scale of the Gumbel noise
            added to the true logits before the argmax (for binary kinds this is a
            logistic model ``P(y=1|x) = sigmoid(x·w / noise)``; 0 gives noiseless labels).
        density: share of non-zero features (sparse_logistic): the mean over features
            of their non-zero frequencies.
        feature_skew: sparse_logistic: exponent s of Zipf-like feature frequencies,
            ``p_j = min(1, c·(j+1)^−s)`` with ``c`` such that their mean is ``density`` (a
            few frequent features, a long tail of rare ones, as words in text; Zipf 1949).
            This spreads the curvature of a linear model over orders of magnitude (an
            ill-conditioned problem); 0 (the default) gives every feature ``density``.
        hidden: width of the teacher's hidden layer (teacher_mlp).
        seed: the run's seed (context); it fixes the truth and every sample.

    Attributes:
        true_weights: ``(dim,)`` weights (linear and logistic kinds), else None.
        true_means: ``(num_classes, dim)`` component means (gaussian_mixture), else None.
        teacher: the teacher ``torch.nn.Sequential`` (teacher_mlp), else None.

    Raises:
        ConfigError: an unknown kind/mode or a parameter out of range.
    """

    def __init__(self, kind: str, mode: str = "offline", n_train: int = 10000, n_test: int = 2000,
                 dim: int = 20, num_classes: int = 2, noise: float = 0.1, density: float = 0.05,
                 hidden: int = 32, feature_skew: float = 0.0, seed: int = 0):
        if kind not in KINDS:
            raise ConfigError(f"unknown synthetic kind {kind!r}; kinds: {', '.join(KINDS)}")
        if mode not in ("offline", "online"):
            raise ConfigError(f"mode must be 'offline' or 'online', got {mode!r}")
        for pname, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim), ("hidden", hidden)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{pname} must be an int >= 1, got {v!r}")
        if not noise >= 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        if not math.isfinite(noise):
            raise ConfigError(f"noise must be finite, got {noise}")
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        if not (isinstance(feature_skew, (int, float)) and 0 <= feature_skew < math.inf):
            raise ConfigError(f"feature_skew must be a finite number >= 0, got {feature_skew!r}")
        if feature_skew and kind != "sparse_logistic":
            raise ConfigError(f"feature_skew applies to kind 'sparse_logistic', not {kind!r}; "
                              "remove it or change the kind")
        binary = kind in ("logistic_regression", "sparse_logistic")
        if binary and num_classes != 2:
            raise ConfigError(f"{kind} is binary: num_classes must be 2, got {num_classes} "
                              "(use gaussian_mixture or teacher_mlp for more classes)")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
        _check_fits_memory(kind, n_test + (0 if mode == "online" else n_train), dim, density)
        self.kind, self.mode, self.online = kind, mode, mode == "online"
        self.n_train, self.n_test, self.dim, self.noise, self.density = n_train, n_test, dim, noise, density
        # each feature's non-zero frequency: one number unless skewed (then the draws differ)
        self.feature_density = (_zipf_frequencies(dim, density, float(feature_skew))
                                if feature_skew else density)
        self.seed = seed
        if kind == "linear_regression":
            self.info = DataInfo("regression", None, (dim,))
        else:
            self.info = DataInfo("classification", num_classes, (dim,))
        g = _gen(seed, _TRUTH)
        self.true_weights = self.true_means = self.teacher = None
        if kind in ("linear_regression", "logistic_regression"):
            self.true_weights = torch.randn(dim, generator=g) / math.sqrt(dim)
        elif kind == "sparse_logistic":  # logits have std ~1 whatever the density
            self.true_weights = torch.randn(dim, generator=g) / math.sqrt(max(density * dim, 1.0))
        elif kind == "gaussian_mixture":
            self.true_means = torch.randn(num_classes, dim, generator=g)
        else:
            self.teacher = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(),
                                               torch.nn.Linear(hidden, num_classes))
            with torch.no_grad():
                for layer, scale in ((self.teacher[0], 1.0), (self.teacher[2], 3.0)):
                    fan_in = layer.weight.shape[1]
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale / math.sqrt(fan_in))
                    layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
            self.teacher.requires_grad_(False)
        self._train = None if self.online else self._offline(_TRAIN, n_train)
        self._test = self._offline(_TEST, n_test)

    def _draw(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of this distribution from generator ``g``."""
        if self.kind == "gaussian_mixture":
            y = torch.randint(self.info.num_classes, (n,), generator=g)
            x = self.true_means[y] + self.noise * torch.randn(n, self.dim, generator=g)
            return x, y
        x = torch.randn(n, self.dim, generator=g)
        if self.kind == "sparse_logistic":
            x = x * (torch.rand(n, self.dim, generator=g) < self.feature_density)
        if self.kind == "linear_regression":
            return x, x @ self.true_weights + self.noise * torch.randn(n, generator=g)
        if self.kind == "teacher_mlp":
            logits = self.teacher(x)
        else:
            z = x @ self.true_weights
            logits = torch.stack([torch.zeros_like(z), z], dim=1)
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=g).clamp_(1e-12, 1 - 1e-7)))
        return x, (logits + self.noise * gumbel).argmax(dim=1)

    def _offline(self, stream: int, n: int) -> ArrayData:
        g = _gen(self.seed, stream)
        xs, ys = [], []
        for start in range(0, n, _CHUNK):
            x, y = self._draw(g, min(_CHUNK, n - start))
            xs.append(scipy.sparse.csr_matrix(x.numpy()) if self.kind == "sparse_logistic" else x.numpy())
            ys.append(y.numpy())
        x = scipy.sparse.vstack(xs, format="csr") if self.kind == "sparse_logistic" else np.concatenate(xs)
        return ArrayData(x, np.concatenate(ys), self.info)

    def train(self) -> ArrayData:
        if self._train is None:
            return super().train()
        return self._train

    def test(self) -> ArrayData:
        return self._test

    def batch(self, rank: int, epoch: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh samples for ``(rank, epoch, step)``, the same on every call (online mode).

        Raises:
            ConfigError: offline mode, or ``batch_size`` < 1.
        """
        if not self.online:
            return super().batch(rank, epoch, step, batch_size)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        x, y = self._draw(_gen(self.seed, _ONLINE, rank, epoch, step), batch_size)
        return x.float(), (y.float() if self.info.task == "regression" else y.long())


SOURCES.register("synthetic", Synthetic, summary="generated data with a known truth: linear/"
                 "logistic (dense, sparse) regression, Gaussian mixture, teacher MLP; offline or online")
