"""Corrupt, truncated and ill-shaped data files: one clear error naming the file (and the line).

Extends tests/partition/ (which covers svmlight syntax errors, CSV rows with a wrong field
count or a non-numeric feature, npz files that are not zips or lack a member, truncated or
mis-tagged idx files, and more workers than samples) with what those leave out.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re

import numpy as np
import pytest

from distml.cli import main
from distml.errors import ConfigError, DataError
from distml.partition import SOURCES

pytestmark = pytest.mark.timeout(60)


def build(**spec):
    return SOURCES.build(spec, seed=0)


def csv_rows(n=12):
    return "a,b,y\n" + "".join(f"{i % 5}.5,{i},{i % 2}\n" for i in range(n))


# ---- CSV ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e400"])
def test_csv_non_finite_feature_names_the_line(tmp_path, value):
    body = csv_rows().splitlines()
    body[5] = f"1.0,{value},0"
    (tmp_path / "d.csv").write_text("\n".join(body) + "\n")
    with pytest.raises(DataError, match=rf"d.csv line 6: feature value '{value}' is not a finite number"):
        build(name="csv", path=str(tmp_path / "d.csv"))


def test_csv_binary_file(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    with pytest.raises(DataError, match=r"d.csv is not a UTF-8 text file"):
        build(name="csv", path=str(tmp_path / "d.csv"))


def test_csv_field_over_the_csv_module_limit_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_text(csv_rows(4) + '1,"' + "9" * 200_000 + '",0\n')
    with pytest.raises(DataError, match=r"d.csv line 6: field larger than field limit"):
        build(name="csv", path=str(tmp_path / "d.csv"))


def test_csv_label_column_of_the_wrong_type(tmp_path):
    (tmp_path / "d.csv").write_text(csv_rows())
    with pytest.raises(ConfigError, match="label_column must be a column index or a header name, got 1.5"):
        build(name="csv", path=str(tmp_path / "d.csv"), label_column=1.5)


def test_csv_regression_target_not_a_number_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,2.5\n2,3.5\n3,high\n")
    with pytest.raises(DataError, match=r"d.csv line 4: target 'high' is not a number"):
        build(name="csv", path=str(tmp_path / "d.csv"), task="regression")


def test_csv_one_class_only(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,0\n3,0\n4,0\n")
    with pytest.raises(DataError, match="d.csv: a classification task needs at least 2 distinct labels"):
        build(name="csv", path=str(tmp_path / "d.csv"))


# ---- svmlight ------------------------------------------------------------------------------
def test_svmlight_non_finite_feature(tmp_path):
    (tmp_path / "d.svm").write_text("0 1:1 2:2\n1 1:2\n0 2:nan\n1 1:4\n0 1:3\n")
    with pytest.raises(DataError, match=r"d.svm: sample 3 \(counting from 1\) holds a nan or inf"):
        build(name="svmlight", path=str(tmp_path / "d.svm"))


def test_svmlight_test_file_wider_than_n_features(tmp_path):
    (tmp_path / "a.svm").write_text("0 1:1\n1 2:1\n0 1:2\n1 2:2\n")
    (tmp_path / "b.svm").write_text("0 1:1\n1 7:1\n")
    with pytest.raises(DataError, match=r"a.svm / .*b.svm is not a valid svmlight file: n_features was set to 2"):
        build(name="svmlight", path=str(tmp_path / "a.svm"), test_path=str(tmp_path / "b.svm"),
              n_features=2)


# ---- npz -----------------------------------------------------------------------------------
def test_npz_member_truncated_behind_its_header(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(50, 3)), y=np.arange(50) % 2)
    raw = bytearray((tmp_path / "d.npz").read_bytes())
    at = raw.find(b"(50, 3)")
    raw[at:at + 7] = b"(90, 3)"        # the header now promises more rows than the archive holds
    (tmp_path / "d.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"d.npz: member 'x' is truncated or corrupt"):
        build(name="npz", path=str(tmp_path / "d.npz"))


def test_npz_half_a_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 3)), y=np.arange(50) % 2)
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"d.npz is not a readable npz archive"):
        build(name="npz", path=str(tmp_path / "d.npz"))


def test_npz_features_and_targets_of_different_lengths(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 3)), y=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"d.npz: 50 training samples but 40 targets"):
        build(name="npz", path=str(tmp_path / "d.npz"))


def test_npz_non_finite_features_name_the_sample(tmp_path):
    x = np.ones((70, 2, 2), dtype=np.float32)
    x[61, 1, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(70) % 2)
    with pytest.raises(DataError, match=r"d.npz: features 'x' sample 61 \(counting from 0\) holds nan or inf"):
        build(name="npz", path=str(tmp_path / "d.npz"))


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([[1, 2]] * 6, dtype=object), y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"d.npz: member 'x' cannot be read \(Object arrays cannot be "
                                         r"loaded when allow_pickle=False\)"):
        build(name="npz", path=str(tmp_path / "d.npz"))


# ---- idx (Fashion-MNIST format) ------------------------------------------------------------
def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _fake_fmnist(folder, n=6, labels=None, images_shape=(28, 28), n_labels=None):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, *images_shape)))
        lab = rng.integers(0, 10, n_labels or n) if labels is None or prefix == "t10k" else labels
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.asarray(lab))


def test_idx_label_out_of_range(tmp_path):
    _fake_fmnist(tmp_path, labels=[0, 1, 2, 12, 3, 4])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz has label 12; Fashion-MNIST labels are 0..9"):
        build(name="fashion_mnist", path=str(tmp_path))


def test_idx_labels_do_not_match_images(tmp_path):
    _fake_fmnist(tmp_path, n_labels=5)
    with pytest.raises(DataError, match=r"labels-idx1-ubyte.gz has \(5,\) labels for 6 images"):
        build(name="fashion_mnist", path=str(tmp_path))


def test_idx_images_of_the_wrong_shape(tmp_path):
    _fake_fmnist(tmp_path, images_shape=(32, 32))
    with pytest.raises(DataError, match=r"images-idx3-ubyte.gz holds images of shape \(32, 32\), expected \(28, 28\)"):
        build(name="fashion_mnist", path=str(tmp_path))


def test_idx_trailing_bytes(tmp_path):
    _fake_fmnist(tmp_path)
    f = tmp_path / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes()) + b"\x00\x01"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is longer than its header says"):
        build(name="fashion_mnist", path=str(tmp_path))


# ---- through the command line ----------------------------------------------------------------
def _dry_run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.parametrize("data,settings,message", [
    (csv_rows().replace("3.5,3,1", "3.5,nan,1"), [], r"d.csv line 5: feature value 'nan' is not a finite"),
    (csv_rows(3), [], r"each of 2 workers gets 1 of 2 samples, fewer than batch_size=4"),
    (csv_rows(), ["--set=workers=20"], r"10 samples cannot be split over 20 workers"),
    (csv_rows(), ["--set=data.partition={name='random_sampling',fraction=0.01}"], r"fewer than batch_size"),
], ids=["nan-feature", "shard-smaller-than-batch", "more-workers-than-samples", "empty-sample"])
def test_bad_data_through_the_cli_is_one_line_exit_2(tmp_path, data, settings, message):
    (tmp_path / "d.csv").write_text(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'workers = 2\n[data]\nsource = {{ name = "csv", path = "{tmp_path / "d.csv"}" }}\n'
                   'batch_size = 4\n[model]\nname = "softmax"\n[train]\nprogress = false\n')
    rc, err = _dry_run(["run", str(cfg), "--dry-run", *settings])
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("distml: error: "), err
    assert re.search(message, lines[0]), lines[0]
