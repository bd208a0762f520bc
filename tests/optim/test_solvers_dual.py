"""SDCA (Shalev-Shwartz & Zhang 2013) against scikit-learn on a real data set (breast cancer)."""

import numpy as np
import pytest

from distml.errors import ConfigError
from distml.optim.glm import primal_objective
from distml.optim.sdca import SDCA

LAM = 1e-2


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x), 2.0 * y - 1.0


def _sklearn_w(loss, x, y):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC
    c = 1.0 / (LAM * len(y))      # sklearn: C·Σ loss + ½‖w‖²  ≡  mean loss + λ/2 ‖w‖²
    if loss == "logistic":
        return LogisticRegression(C=c, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(x, y).coef_[0]
    if loss == "hinge":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # liblinear may stop short; we compare objectives
            return LinearSVC(C=c, loss="hinge", fit_intercept=False, tol=1e-10,
                             max_iter=200_000).fit(x, y).coef_[0]
    return Ridge(alpha=LAM * len(y), fit_intercept=False, tol=1e-12).fit(x, y).coef_


@pytest.mark.parametrize("loss", ["hinge", "logistic", "squared"])
def test_sdca_reaches_sklearn_objective_and_certifies_it(loss, data):
    x, y = data
    solver = SDCA(x, y, LAM, loss, seed=1)
    w, gap = solver.fit(epochs=500, tol=1e-6)
    assert gap < 1e-4
    # the gap is a certificate: P(w) − D(α) ≥ P(w) − P(w*) ≥ 0
    ours = primal_objective(loss, x, y, w, LAM)
    theirs = primal_objective(loss, x, y, _sklearn_w(loss, x, y), LAM)
    assert abs(ours - theirs) <= 1e-4 * theirs, (ours, theirs)
    assert ours - theirs <= gap + 1e-12           # P(w) − P(w*) ≤ gap
    assert ours - gap <= theirs + 1e-9        # the dual value lower-bounds every primal value
    assert np.allclose(w, solver.primal_w())


def test_sdca_gap_is_monotone_enough_and_state_roundtrips(data):
    x, y = data
    a = SDCA(x, y, LAM, "hinge", seed=3)
    a.fit(epochs=2, tol=0)
    b = SDCA(x, y, LAM, "hinge", seed=99)
    b.load_state_dict(a.state_dict())
    wa, ga = a.fit(epochs=3, tol=0)
    wb, gb = b.fit(epochs=3, tol=0)
    assert np.array_equal(wa, wb) and ga == gb


@pytest.mark.parametrize("kwargs, message", [
    ({"lam": 0.0}, "lam must be > 0"),
    ({"loss": "huber"}, "loss must be one of hinge, logistic, squared"),
    ({"sigma": 0.5}, "sigma must be >= 1"),
])
def test_sdca_validates(kwargs, message, data):
    x, y = data
    args = {"lam": LAM, "loss": "hinge"} | kwargs
    with pytest.raises(ConfigError, match=message):
        SDCA(x[:10], y[:10], **args)


def test_sdca_rejects_01_labels(data):
    x, y = data
    with pytest.raises(ConfigError, match="labels in"):
        SDCA(x[:10], (y[:10] + 1) / 2, LAM, "logistic")
