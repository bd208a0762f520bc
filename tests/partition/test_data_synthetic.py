"""Synthetic generators: reproducible, independent across ranks, truth recoverable."""

import numpy as np
import pytest
import torch

from distml.errors import ConfigError
from distml.partition import SOURCES

KINDS = ["linear_regression", "logistic_regression", "sparse_logistic", "gaussian_mixture",
         "teacher_mlp"]


def build(seed=0, **params):
    return SOURCES.build({"name": "synthetic", "n_train": 2000, "n_test": 500, **params}, seed=seed)


def all_of(data):
    return data.take(np.arange(len(data)))


@pytest.mark.parametrize("kind", KINDS)
def test_offline_reproducible_from_seed(kind):
    a, b, c = build(0, kind=kind), build(0, kind=kind), build(1, kind=kind)
    xa, ya = all_of(a.train())
    xb, yb = all_of(b.train())
    xc, _ = all_of(c.train())
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert xa.shape == (2000, 20) and xa.dtype == torch.float32
    assert ya.dtype == (torch.float32 if kind == "linear_regression" else torch.int64)
    xt, _ = all_of(a.test())
    assert xt.shape == (500, 20) and not torch.equal(xt, xa[:500])   # test set has its own stream


@pytest.mark.parametrize("kind", KINDS)
def test_online_pure_function_of_rank_epoch_step(kind):
    s = build(0, kind=kind, mode="online")
    assert s.online
    x1, y1 = s.batch(0, 2, 5, 16)
    x2, y2 = build(0, kind=kind, mode="online").batch(0, 2, 5, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for other in [(1, 2, 5), (0, 3, 5), (0, 2, 6)]:
        assert not torch.equal(x1, s.batch(*other, 16)[0])
    assert not torch.equal(x1, build(1, kind=kind, mode="online").batch(0, 2, 5, 16)[0])
    with pytest.raises(ConfigError, match="online source"):
        s.train()
    assert len(s.test()) == 500


def test_offline_source_has_no_stream():
    with pytest.raises(ConfigError, match="offline source"):
        build(kind="linear_regression").batch(0, 0, 0, 4)


def test_linear_regression_truth_recovered_by_least_squares():
    s = build(3, kind="linear_regression", noise=0.1)
    x, y = all_of(s.train())
    w = torch.linalg.lstsq(x.double(), y.double().unsqueeze(1)).solution.squeeze(1)
    err = (w - s.true_weights.double()).norm()
    assert err < 0.1 * np.sqrt(20 / 2000) * 4          # ~ noise·sqrt(d/n), with slack
    assert s.true_weights.norm() > 10 * err


@pytest.mark.parametrize("kind", ["logistic_regression", "sparse_logistic"])
def test_logistic_labels_follow_true_weights(kind):
    s = build(0, kind=kind, noise=0.05)
    x, y = all_of(s.train())
    pred = (x @ s.true_weights > 0).long()
    informative = (x != 0).any(dim=1)
    assert (pred[informative] == y[informative]).float().mean() > 0.9
    assert 0.3 < y.float().mean() < 0.7


def test_sparse_logistic_density_and_sparse_storage():
    s = build(0, kind="sparse_logistic", density=0.1, dim=50)
    assert hasattr(s.train().x, "nnz")                  # kept as CSR
    x, _ = all_of(s.train())
    assert abs((x != 0).float().mean().item() - 0.1) < 0.01


def test_sparse_logistic_feature_skew_gives_zipf_frequencies():
    s = build(0, kind="sparse_logistic", density=0.05, dim=200, feature_skew=1.0)
    p = s.feature_density.double().numpy()
    assert abs(p.mean() - 0.05) < 1e-6 and p[0] == 1.0 and (np.diff(p) <= 0).all()
    x, _ = all_of(s.train())
    seen = (x != 0).double().mean(dim=0).numpy()
    assert abs(seen.mean() - 0.05) < 0.003          # density stays the mean frequency
    # the rank-frequency law: log-log slope -1 over the unclipped features (Zipf 1949)
    ranks = np.arange(len(p)) + 1
    slope = np.polyfit(np.log(ranks[5:]), np.log(seen[5:]), 1)[0]
    assert -1.2 < slope < -0.8
    flat, _ = all_of(build(0, kind="sparse_logistic", density=0.05, dim=200).train())
    assert abs(np.polyfit(np.log(ranks), np.log((flat != 0).double().mean(dim=0).numpy()), 1)[0]) < 0.1


def test_gaussian_mixture_nearest_mean_is_label():
    s = build(0, kind="gaussian_mixture", num_classes=4, noise=0.3)
    x, y = all_of(s.train())
    nearest = torch.cdist(x, s.true_means).argmin(dim=1)
    assert (nearest == y).float().mean() > 0.95
    assert set(y.tolist()) == {0, 1, 2, 3}


def test_teacher_labels_are_teacher_argmax():
    s = build(0, kind="teacher_mlp", num_classes=3, noise=0.0)
    x, y = all_of(s.train())
    assert torch.equal(s.teacher(x).argmax(dim=1), y)
    assert np.bincount(y.numpy(), minlength=3).min() > 100   # no class starves


def test_label_noise_grows_with_noise():
    agree = []
    for noise in (0.0, 0.5, 5.0):
        s = build(0, kind="logistic_regression", noise=noise)
        x, y = all_of(s.train())
        agree.append(((x @ s.true_weights > 0).long() == y).float().mean().item())
    assert agree[0] == 1.0 and agree[0] > agree[1] > agree[2] > 0.45


@pytest.mark.parametrize("params,match", [
    ({"kind": "nope"}, "unknown synthetic kind"),
    ({"kind": "linear_regression", "mode": "later"}, "mode must be"),
    ({"kind": "sparse_logistic", "density": 0}, r"density must be in \(0, 1\], got 0"),
    ({"kind": "logistic_regression", "num_classes": 3}, "binary"),
    ({"kind": "sparse_logistic", "feature_skew": -1}, "feature_skew must be a finite number >= 0"),
    ({"kind": "logistic_regression", "feature_skew": 1.0}, "feature_skew applies to kind 'sparse_logistic'"),
    ({"kind": "teacher_mlp", "num_classes": 1}, "num_classes must be"),
    ({"kind": "linear_regression", "noise": -1}, "noise must be >= 0"),
    ({"kind": "linear_regression", "bogus": 1}, "has no parameter 'bogus'"),
])
def test_bad_params(params, match):
    with pytest.raises(ConfigError, match=match):
        build(**params)
