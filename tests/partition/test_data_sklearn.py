"""scikit-learn bundled sets."""

import numpy as np
import pytest
import torch

from distml.errors import ConfigError
from distml.partition import SOURCES


@pytest.mark.parametrize("dataset,n,d,classes", [
    ("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3),
    ("iris", 150, 4, 3), ("diabetes", 442, 10, None)])
def test_bundled_sets(dataset, n, d, classes):
    s = SOURCES.build({"name": "sklearn", "dataset": dataset}, seed=0)
    assert s.info.input_shape == (d,) and s.info.num_classes == classes
    assert len(s.train()) + len(s.test()) == n
    assert set(s.train().rows).isdisjoint(s.test().rows)
    x, y = s.train().take(np.arange(len(s.train())))
    assert torch.allclose(x.mean(0), torch.zeros(d), atol=1e-4)   # standardized on train
    assert y.dtype == (torch.float32 if classes is None else torch.int64)
    if classes:
        share = np.bincount(s.test().labels) / len(s.test())
        glob = np.bincount(np.concatenate([s.train().labels, s.test().labels])) / n
        assert np.abs(share - glob).max() < 0.03                 # stratified


def test_split_deterministic_by_seed():
    a = SOURCES.build({"name": "sklearn", "dataset": "wine"}, seed=0)
    b = SOURCES.build({"name": "sklearn", "dataset": "wine"}, seed=0)
    c = SOURCES.build({"name": "sklearn", "dataset": "wine"}, seed=1)
    assert np.array_equal(a.test().rows, b.test().rows)
    assert not np.array_equal(a.test().rows, c.test().rows)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown sklearn dataset 'mnist'; bundled: digits"):
        SOURCES.build({"name": "sklearn", "dataset": "mnist"})


def test_digits_as_images_are_the_same_pixels_in_8x8():
    flat = SOURCES.build({"name": "sklearn", "dataset": "digits", "standardize": False}, seed=0)
    img = SOURCES.build({"name": "sklearn", "dataset": "digits", "standardize": False,
                         "images": True}, seed=0)
    assert img.info.input_shape == (1, 8, 8)
    idx = np.arange(5)
    xf, yf = flat.train().take(idx)
    xi, yi = img.train().take(idx)
    assert xi.shape == (5, 1, 8, 8) and torch.equal(yf, yi)
    import sklearn.datasets
    raw = sklearn.datasets.load_digits()
    assert torch.equal(xi[:, 0], torch.as_tensor(raw.images[flat.train().rows[:5]], dtype=torch.float32))
    assert torch.equal(xi.reshape(5, -1), xf)


def test_images_only_for_digits():
    with pytest.raises(ConfigError, match="images = true applies to digits"):
        SOURCES.build({"name": "sklearn", "dataset": "wine", "images": True})


def test_standardized_digit_images_equal_the_standardized_table():
    flat = SOURCES.build({"name": "sklearn", "dataset": "digits"}, seed=0)
    img = SOURCES.build({"name": "sklearn", "dataset": "digits", "images": True}, seed=0)
    idx = np.arange(len(img.test()))
    assert torch.allclose(img.test().take(idx)[0].reshape(len(idx), -1), flat.test().take(idx)[0])
