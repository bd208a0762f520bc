"""svmlight / csv / npz round trips and error messages."""

import numpy as np
import pytest
import torch
from sklearn.datasets import dump_svmlight_file, load_iris

from distml.errors import ConfigError, DataError
from distml.partition import SOURCES


def all_of(data):
    return data.take(np.arange(len(data)))


@pytest.fixture
def iris():
    b = load_iris()
    return b.data.astype(np.float32), b.target.astype(np.int64)


def test_svmlight_round_trip_with_test_file(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((60, 30)) < 0.1) * rng.normal(size=(60, 30))
    y = np.where(rng.random(60) < 0.5, -1, 1)
    dump_svmlight_file(x[:40], y[:40], str(tmp_path / "train.svm"))
    dump_svmlight_file(x[40:], y[40:], str(tmp_path / "test.svm"))
    s = SOURCES.build({"name": "svmlight", "path": str(tmp_path / "train.svm"),
                       "test_path": str(tmp_path / "test.svm"), "n_features": 30})
    assert s.info.num_classes == 2 and s.info.input_shape == (30,)
    assert hasattr(s.train().x, "nnz")                              # stays sparse
    xt, yt = all_of(s.test())
    assert torch.allclose(xt, torch.tensor(x[40:], dtype=torch.float32), atol=1e-6)
    assert torch.equal(yt, torch.tensor((y[40:] + 1) // 2))         # -1/+1 -> 0/1
    assert yt.dtype == torch.int64


def test_svmlight_split_and_regression(tmp_path):
    x = np.arange(50, dtype=float).reshape(25, 2)
    y = x[:, 0] * 0.5
    dump_svmlight_file(x, y, str(tmp_path / "r.svm"))
    s = SOURCES.build({"name": "svmlight", "path": str(tmp_path / "r.svm"), "task": "regression"})
    assert len(s.train()) == 20 and len(s.test()) == 5
    xs, ys = all_of(s.train())
    assert ys.dtype == torch.float32 and torch.allclose(ys, xs[:, 0] * 0.5)


def test_svmlight_bad_file(tmp_path):
    (tmp_path / "bad.svm").write_text("1 3:abc\n")
    with pytest.raises(DataError, match="bad.svm is not a valid svmlight file"):
        SOURCES.build({"name": "svmlight", "path": str(tmp_path / "bad.svm")})
    with pytest.raises(DataError, match="not found"):
        SOURCES.build({"name": "svmlight", "path": str(tmp_path / "none.svm")})


def test_csv_round_trip_with_header_and_named_label(tmp_path, iris):
    x, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    lines = ["species,a,b,c,d"] + [f"{n}," + ",".join(map(str, r)) for n, r in zip(names, x)]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    s = SOURCES.build({"name": "csv", "path": str(tmp_path / "iris.csv"), "label_column": "species"},
                      seed=0)
    assert s.info.num_classes == 3 and s.info.input_shape == (4,)
    assert len(s.train()) + len(s.test()) == 150
    xt, yt = all_of(s.train())
    rows = s.train().rows
    assert torch.allclose(xt, torch.tensor(x[rows]))
    assert torch.equal(yt, torch.tensor(y[rows]))                 # sorted names -> 0,1,2
    assert np.bincount(s.test().labels).tolist() == [10, 10, 10]  # stratified


def test_csv_numeric_no_header_last_column(tmp_path, iris):
    x, y = iris
    np.savetxt(tmp_path / "a.csv", np.column_stack([x, y]), delimiter=",")
    s = SOURCES.build({"name": "csv", "path": str(tmp_path / "a.csv"), "standardize": True})
    xt, _ = all_of(s.train())
    assert len(s.train()) == 120 and torch.allclose(xt.mean(0), torch.zeros(4), atol=1e-5)


def test_csv_malformed_row_names_line(tmp_path):
    (tmp_path / "m.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,x,0\n")
    with pytest.raises(DataError, match=r"m.csv line 4: feature value 'x' is not a number"):
        SOURCES.build({"name": "csv", "path": str(tmp_path / "m.csv")})
    (tmp_path / "n.csv").write_text("1,2,0\n3,4,1\n5,0\n")
    with pytest.raises(DataError, match=r"n.csv line 3: expected 3 fields, found 2"):
        SOURCES.build({"name": "csv", "path": str(tmp_path / "n.csv")})


def test_csv_bad_label_column(tmp_path):
    (tmp_path / "a.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="no column named 'z'"):
        SOURCES.build({"name": "csv", "path": str(tmp_path / "a.csv"), "label_column": "z"})
    with pytest.raises(DataError, match="label_column=5"):
        SOURCES.build({"name": "csv", "path": str(tmp_path / "a.csv"), "label_column": 5})


def test_npz_memmap_round_trip_with_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3, 4)).astype(np.float32), rng.integers(3, 6, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])
    s = SOURCES.build({"name": "npz", "path": str(tmp_path / "d.npz")})
    assert isinstance(s.train().x, np.memmap)                      # not read into memory
    assert s.info.input_shape == (3, 4) and s.info.num_classes == 3
    xb, yb = s.train().take(np.array([7, 2]))
    assert torch.equal(xb, torch.from_numpy(x[[7, 2]])) and torch.equal(yb, torch.tensor(y[[7, 2]] - 3))
    assert len(s.test()) == 10


def test_npz_compressed_and_split(tmp_path):
    x, y = np.arange(40.0).reshape(20, 2), np.arange(20.0)
    np.savez_compressed(tmp_path / "c.npz", feats=x, target=y)
    s = SOURCES.build({"name": "npz", "path": str(tmp_path / "c.npz"), "x_key": "feats",
                       "y_key": "target", "task": "regression", "test_fraction": 0.25})
    assert len(s.train()) == 15 and len(s.test()) == 5
    xb, yb = all_of(s.test())
    assert torch.equal(yb, xb[:, 0] / 2)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)))
    with pytest.raises(DataError, match="has no array 'y'; it holds: x"):
        SOURCES.build({"name": "npz", "path": str(tmp_path / "d.npz")})
    (tmp_path / "e.npz").write_text("nope")
    with pytest.raises(DataError, match="not a readable npz archive"):
        SOURCES.build({"name": "npz", "path": str(tmp_path / "e.npz")})


def test_bad_task_and_split(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="task must be one of"):
        SOURCES.build({"name": "npz", "path": str(tmp_path / "d.npz"), "task": "ranking"})
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\)"):
        SOURCES.build({"name": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 1.5})
