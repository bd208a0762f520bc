"""Config loading: TOML errors with lines, unknown keys listed, ranges, --set overrides."""

import pytest

from distml.config import apply_overrides, load_config, parse_config
from distml.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(base={"optim": {"name": "sgd", "lr": 0.1}},
                      overrides=["optim.lr=0.5", "train.epochs=3", "data.source.path='/x'",
                                 "algorithm.bucket_mb=4"])
    assert cfg.optim.spec() == {"name": "sgd", "lr": 0.5}
    assert cfg.train.epochs == 3
    assert cfg.data.source == {"name": "fashion_mnist", "path": "/x"}
    assert cfg.algorithm.spec() == {"name": "sync_sgd", "bucket_mb": 4}


def test_toml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[train\nepochs = 1\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: TOML syntax error.*line 2"):
        load_config(p)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epocs'.*valid keys here: epochs"):
        parse_config({"train": {"epocs": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*train"):
        parse_config({"trian": {}})


@pytest.mark.parametrize("data,match", [
    ({"workers": 0}, "workers"),
    ({"data": {"batch_size": -1}}, "batch_size"),
    ({"train": {"target_accuracy": 1.5}}, "target_accuracy"),
    ({"comm": {"timeout_s": 0}}, "timeout_s"),
    ({"name": "a/b"}, "folder name"),
])
def test_out_of_range(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_bad_override():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
